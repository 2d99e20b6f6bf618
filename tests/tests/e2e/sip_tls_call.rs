//! SIP over TLS with mutual authentication. Debian's sipp is built without OpenSSL, so the
//! client here is `openssl s_client` carrying a SIP OPTIONS request: sip-agent's certificate must
//! verify against the test CA for its IP address, a client presenting a CA-signed certificate
//! gets `200 OK`, and a client without one is refused during the handshake (`tls.client_ca`).
//! Certificates are made for this test with the openssl command line tool.

use std::{
    io::{Read, Write},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::sip_support::*;
use anyhow::{bail, Result};
use xdpfork_tests::Host;

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// CA plus leaf certificates `name.crt`/`name.key` for each (name, IP SANs).
fn make_pki(dir: &Path, leaves: &[(&str, &str)]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=xdpfork test CA",
    ]);
    openssl(dir, &ca)?;
    for (name, sans) in leaves {
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("subjectAltName={sans}\n"),
        )?;
        let (key, csr, crt, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        let subj = format!("/CN={name}");
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &req)?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "1",
                "-extfile",
                &ext,
            ],
        )?;
    }
    Ok(())
}

/// Sends an OPTIONS over TLS from the caller namespace and returns what came back within 5 s.
fn tls_options(t: &SipTest, client_cert: Option<(&str, &str)>, ca: &str) -> Result<String> {
    let mut cmd = t.s.topo.command(Host::Caller, "openssl")?;
    cmd.args([
        "s_client",
        "-connect",
        "10.77.1.1:5061",
        "-CAfile",
        ca,
        "-verify_return_error",
        "-verify_ip",
        "10.77.1.1",
        "-quiet",
    ]);
    if let Some((crt, key)) = client_cert {
        cmd.args(["-cert", crt, "-key", key]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let options = "OPTIONS sip:xdpfork@10.77.1.1:5061 SIP/2.0\r\n\
Via: SIP/2.0/TLS 10.77.1.2:5061;branch=z9hG4bK-tls-options-1\r\n\
Max-Forwards: 70\r\n\
From: <sip:probe@10.77.1.2>;tag=tls1\r\n\
To: <sip:xdpfork@10.77.1.1>\r\n\
Call-ID: tls-options-1@10.77.1.2\r\n\
CSeq: 1 OPTIONS\r\n\
Content-Length: 0\r\n\r\n";
    if let Some(mut stdin) = child.stdin.take() {
        // A refused handshake may close the pipe first; the missing answer is what is checked.
        let _ = stdin.write_all(options.as_bytes());
        // stdin stays open until the end (-quiet ignores EOF anyway) so the answer can arrive.
        let mut stdout = child.stdout.take().expect("invariant: piped stdout");
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        if got.windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                }
            }
            String::from_utf8_lossy(&got).into_owned()
        });
        let deadline = Instant::now() + Duration::from_secs(6);
        while !reader.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        drop(stdin);
        return reader
            .join()
            .map_err(|_| anyhow::anyhow!("reader thread panicked"));
    }
    bail!("no stdin for openssl s_client")
}

#[test]
fn options_over_mutual_tls() -> Result<()> {
    let pki = std::env::temp_dir().join(format!("xdpfork-sip-tls-{}", std::process::id()));
    make_pki(
        &pki,
        &[
            ("agent", "IP:10.77.1.1,IP:10.77.2.1"),
            ("caller", "IP:10.77.1.2"),
        ],
    )?;
    let p = |f: &str| pki.join(f).to_string_lossy().into_owned();
    let tls = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
        p("agent.crt"),
        p("agent.key"),
        p("ca.crt"),
    );
    let result = (|| -> Result<()> {
        let t = SipTest::start_with(
            r#"udp = ["10.77.1.1:5060", "10.77.2.1:5060"]
tls = ["10.77.1.1:5061"]"#,
            "10.77.2.2:5060:udp",
            &tls,
        )?;
        let (crt, key) = (p("caller.crt"), p("caller.key"));
        let ok = tls_options(&t, Some((&crt, &key)), &p("ca.crt"))?;
        assert!(
            ok.starts_with("SIP/2.0 200") && ok.contains("CSeq: 1 OPTIONS"),
            "mutual TLS OPTIONS: {ok:?}\n{}",
            t.diag(None)
        );
        let refused = tls_options(&t, None, &p("ca.crt"))?;
        assert!(
            !refused.contains("SIP/2.0"),
            "a client without certificate must be refused: {refused:?}"
        );
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&pki);
    result
}
