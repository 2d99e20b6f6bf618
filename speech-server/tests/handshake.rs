//! Upgrade checks: bearer token (401), subprotocol (400), --reject-handshake CODE.

mod common;

use common::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

async fn status_of(
    addr: &str,
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> u16 {
    let tcp = TcpStream::connect(addr).await.expect("tcp connect");
    match tokio_tungstenite::client_async(req, tcp).await {
        Err(WsError::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => 101,
    }
}

#[tokio::test]
async fn token_is_required_when_configured() {
    let mut srv = start_server("token", &["--token", "s3cret"]).await;
    assert_eq!(
        status_of(&srv.addr, request(&srv.addr, "ws", &[])).await,
        401
    );
    let wrong = request(&srv.addr, "ws", &[("authorization", "Bearer nope")]);
    assert_eq!(status_of(&srv.addr, wrong).await, 401);
    let ws = connect(&srv.addr, &[("authorization", "Bearer s3cret")]).await;
    drop(ws);
    let summary = srv.interrupt().await;
    let conns = summary["connections"].as_array().expect("connections");
    let oks: Vec<&serde_json::Value> = conns.iter().map(|c| &c["token_ok"]).collect();
    assert_eq!(oks, [false, false, true]);
    assert_eq!(conns[0]["handshake_status"], 401);
    assert_eq!(conns[2]["handshake_status"], 101);
}

#[tokio::test]
async fn subprotocol_is_required() {
    let mut srv = start_server("subproto", &[]).await;
    let req = format!("ws://{}/fork", srv.addr)
        .into_client_request()
        .expect("url");
    assert_eq!(status_of(&srv.addr, req).await, 400);
    let summary = srv.interrupt().await;
    assert_eq!(summary["connections"][0]["subprotocol_ok"], false);
    assert_eq!(
        summary["connections"][0]["token_ok"],
        serde_json::Value::Null
    );
}

#[tokio::test]
async fn reject_handshake_answers_the_given_status() {
    let mut srv = start_server("reject", &["--reject-handshake", "503"]).await;
    assert_eq!(
        status_of(&srv.addr, request(&srv.addr, "ws", &[])).await,
        503
    );
    let summary = srv.interrupt().await;
    assert_eq!(summary["connections"][0]["handshake_status"], 503);
}
