//! `Upgrade: websocket` through the proxy with a real WebSocket client and server.

use futures_util::{SinkExt, StreamExt};
use outrigger_testkit::{Mode, Upstream};
use outrigger_tests::*;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn websocket_messages_flow_both_ways() {
    let up = Upstream::start(Mode::Ok).await;
    let proxy = Outrigger::start(&config(&[up.addr()], DEFAULT_ROUTE));
    let url = format!("ws://{}/ws", proxy.inbound());
    let (mut ws, resp) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(url))
        .await
        .unwrap()
        .expect("handshake");
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().contains_key("x-request-id"));
    for text in ["hello", "through", "outrigger"] {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    let echoed = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_data().as_ref(), &[0u8, 1, 2, 255]);
    ws.close(None).await.unwrap();
    let line = proxy
        .wait_for_log(|l| l["kind"] == "access" && l["path"] == "/ws")
        .await;
    assert_eq!(line["status"], 101);
}
