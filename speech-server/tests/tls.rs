//! wss://: the server presents a PEM certificate (generated with rcgen) and the protocol runs
//! unchanged over TLS.

mod common;

use std::sync::Arc;

use common::*;
use futures_util::SinkExt;
use rustls::pki_types::ServerName;
use speech_proto::SUBPROTOCOL;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn wss_round_trip() {
    let dir = scratch("tls-certs");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let cert_pem = dir.join("cert.pem");
    let key_pem = dir.join("key.pem");
    std::fs::write(&cert_pem, ck.cert.pem()).expect("write cert");
    std::fs::write(&key_pem, ck.key_pair.serialize_pem()).expect("write key");

    let cert_arg = cert_pem.display().to_string();
    let key_arg = key_pem.display().to_string();
    let mut srv = start_server(
        "tls",
        &[
            "--tls-cert",
            &cert_arg,
            "--tls-key",
            &key_arg,
            "--exit-after-stops",
            "1",
        ],
    )
    .await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(&srv.addr).await.expect("tcp");
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake");
    let port = srv.addr.rsplit(':').next().expect("port");
    let (mut ws, resp) =
        tokio_tungstenite::client_async(request(&format!("localhost:{port}"), "wss", &[]), tls)
            .await
            .expect("websocket over TLS");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some(SUBPROTOCOL)
    );
    ws.send(Message::Text(
        start_msg(3, "tls", "callee", "PCMA", false).into(),
    ))
    .await
    .expect("start");
    ws.send(Message::Binary(frame(3, 1, 8, &[0x2A; 160]).into()))
        .await
        .expect("audio");
    ws.send(Message::Text(stop_msg(3).into()))
        .await
        .expect("stop");

    let summary = srv.wait_summary().await;
    assert_eq!(summary["connections"][0]["tls"], true);
    assert_eq!(stream(&summary, 3)["payload_bytes"], 160);
    assert_eq!(read(&srv.out().join("tls-callee-3.g711")), vec![0x2A; 160]);
}
