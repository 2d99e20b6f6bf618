#![no_std]
#![no_main]
use aya_ebpf::{bindings::xdp_action, btf_maps::{HashMap, PerCpuArray}, macros::{btf_map, xdp}, programs::XdpContext};
use aya_log_ebpf::info;

#[btf_map]
static FLOWS: HashMap<u32, u64, 1024> = HashMap::new();
#[btf_map]
static COUNTERS: PerCpuArray<u64, 16> = PerCpuArray::new();

#[xdp]
pub fn xdp_test(ctx: XdpContext) -> u32 {
    if let Some(c) = COUNTERS.get_ptr_mut(0) { unsafe { *c += 1 } }
    if unsafe { FLOWS.get(&1) }.is_some() { info!(&ctx, "hit"); }
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! { loop {} }
