//! The streaming server end to end: Exec (plain and with a terminal) and PortForward
//! over WebSockets, as the kubelet proxies kubectl's.

use std::time::{Duration, Instant};

use super::*;

/// Exec through the streaming server, as the kubelet proxies kubectl's: a WebSocket
/// speaking v5.channel.k8s.io, stdin in, stdout and stderr out, the exit code in the
/// final status; the URL works once.
pub async fn streaming_exec(client: &mut Client, container: &str) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let url = client
        .exec(ExecRequest {
            container_id: container.into(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "cat; echo done >&2; exit 4".into(),
            ],
            tty: false,
            stdin: true,
            stdout: true,
            stderr: true,
        })
        .await
        .expect("Exec")
        .into_inner()
        .url;
    let mut request = url
        .replace("http://", "ws://")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v5.channel.k8s.io".parse().expect("header"),
    );
    let (mut ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("WebSocket upgrade");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("v5.channel.k8s.io")
    );
    ws.send(Message::Binary(b"\x00hello\n".to_vec().into()))
        .await
        .expect("stdin");
    ws.send(Message::Binary(vec![255, 0].into()))
        .await
        .expect("close stdin");
    let (mut stdout, mut stderr, mut status) = (Vec::new(), Vec::new(), String::new());
    while let Some(Ok(message)) = ws.next().await {
        match message {
            Message::Binary(data) if !data.is_empty() => match data[0] {
                1 => stdout.extend_from_slice(&data[1..]),
                2 => stderr.extend_from_slice(&data[1..]),
                3 => status = String::from_utf8_lossy(&data[1..]).to_string(),
                _ => {}
            },
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert_eq!(
        (stdout.as_slice(), stderr.as_slice()),
        (b"hello\n".as_slice(), b"done\n".as_slice())
    );
    let status: serde_json::Value = serde_json::from_str(&status).expect("a Status");
    assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
    assert_eq!(status["details"]["causes"][0]["message"], "4", "{status}");
    let mut again = url
        .replace("http://", "ws://")
        .into_client_request()
        .expect("request");
    again.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v5.channel.k8s.io".parse().expect("header"),
    );
    assert!(
        tokio_tungstenite::connect_async(again).await.is_err(),
        "the URL is single-use"
    );
    // With a terminal: a resize (channel 4) reaches it, input is echoed, one output.
    let url = client
        .exec(ExecRequest {
            container_id: container.into(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "read line; stty size; tty; exit 0".into(),
            ],
            tty: true,
            stdin: true,
            stdout: true,
            stderr: false,
        })
        .await
        .expect("Exec with a TTY")
        .into_inner()
        .url;
    let mut request = url
        .replace("http://", "ws://")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v4.channel.k8s.io".parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("upgrade");
    let mut resize = vec![4u8];
    resize.extend_from_slice(br#"{"Width":100,"Height":40}"#);
    ws.send(Message::Binary(resize.into()))
        .await
        .expect("resize");
    ws.send(Message::Binary(b"\x00go\n".to_vec().into()))
        .await
        .expect("stdin");
    let (mut terminal, mut status) = (String::new(), String::new());
    while let Some(Ok(message)) = ws.next().await {
        match message {
            Message::Binary(data) if !data.is_empty() => match data[0] {
                1 => terminal.push_str(&String::from_utf8_lossy(&data[1..])),
                3 => status = String::from_utf8_lossy(&data[1..]).to_string(),
                _ => {}
            },
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert!(
        terminal.contains("40 100") && terminal.contains("/dev/pts/"),
        "{terminal:?} {status}"
    );
    assert!(
        terminal.contains("go\r\n"),
        "input echoed by the terminal: {terminal:?}"
    );
    assert!(status.contains("Success"), "{status}");
}

/// PortForward through the streaming server: a WebSocket (v4.channel.k8s.io) whose
/// channel 0 reaches port 8080 on the pod's loopback, where busybox httpd answers.
pub async fn port_forward(client: &mut Client, sandbox: &str, web: &str) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    // Serving once wget from inside the pod gets an answer.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !exec(
        client,
        web,
        &["wget", "-q", "-O", "-", "http://127.0.0.1:8080/"],
        5,
    )
    .await
    .is_ok_and(|o| o.exit_code == 0)
    {
        assert!(Instant::now() < deadline, "httpd never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = client
        .port_forward(PortForwardRequest {
            pod_sandbox_id: sandbox.into(),
            port: vec![8080],
        })
        .await
        .expect("PortForward")
        .into_inner()
        .url;
    let mut request = format!("{}?port=8080", url.replace("http://", "ws://"))
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v4.channel.k8s.io".parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("upgrade");
    let mut announced = Vec::new();
    while announced.len() < 2 {
        if let Some(Ok(Message::Binary(data))) = ws.next().await {
            announced.push(data.to_vec());
        }
    }
    assert_eq!(
        announced,
        [vec![0, 0x90, 0x1f], vec![1, 0x90, 0x1f]],
        "each channel names port 8080"
    );
    let mut get = vec![0u8];
    get.extend_from_slice(b"GET / HTTP/1.0\r\n\r\n");
    ws.send(Message::Binary(get.into())).await.expect("request");
    let mut response = String::new();
    while let Some(Ok(message)) = ws.next().await {
        match message {
            Message::Binary(data) if data.first() == Some(&0) => {
                response.push_str(&String::from_utf8_lossy(&data[1..]));
            }
            Message::Binary(data) if data.first() == Some(&1) => {
                panic!(
                    "port-forward error: {}",
                    String::from_utf8_lossy(&data[1..])
                );
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert!(
        response.starts_with("HTTP/1.") && response.contains("hello-from-pod"),
        "{response}"
    );
}
