use aya::programs::{Xdp, XdpMode};
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).unwrap();
    let data = std::fs::read(&path)?;
    let mut ebpf = aya::EbpfLoader::new().load(&data)?;
    match aya_log::EbpfLogger::init(&mut ebpf) { Ok(l) => { println!("logger ok"); std::mem::forget(l) }, Err(e) => println!("logger err {e}") }
    let p: &mut Xdp = ebpf.program_mut("xdp_test").unwrap().try_into()?;
    p.load()?;
    p.attach("lo", XdpMode::default())?;
    for (n, m) in ebpf.maps() { println!("map {n} {:?}", m); }
    std::thread::sleep(std::time::Duration::from_secs(30));
    Ok(())
}
