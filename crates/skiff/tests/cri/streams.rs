//! The streaming server end to end: Exec (plain and with a terminal), Attach and PortForward
//! over WebSockets, as the kubelet proxies kubectl's.

use std::time::{Duration, Instant};

use super::*;

/// The terminal's size, once it has one: containerd applies resizes asynchronously
/// (skiff in order with the input), and busybox's `stty size` fails on a 0x0 terminal.
const STTY_SIZE: &str =
    "for i in $(seq 50); do s=$(stty size 2>/dev/null) && break; sleep 0.1; done; echo $s";

/// Exec through the streaming server, as the kubelet proxies kubectl's: a WebSocket
/// speaking `protocol`, stdin in, stdout and stderr out, the exit code in the final
/// status; the URL works once. With v5, the client's end of stdin reaches the command
/// (v4 has no way to say it: the command reads one line).
pub async fn streaming_exec(client: &mut Client, container: &str, protocol: &str) {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let v5 = protocol == "v5.channel.k8s.io";
    let script = if v5 {
        "cat; echo done >&2; exit 4"
    } else {
        "read line; echo $line; echo done >&2; exit 4"
    };
    let url = client
        .exec(ExecRequest {
            container_id: container.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            tty: false,
            stdin: true,
            stdout: true,
            stderr: true,
        })
        .await
        .expect("Exec")
        .into_inner()
        .url;
    let (mut ws, chosen) = connect(&url, protocol).await;
    assert_eq!(chosen, protocol);
    ws.send(Message::Binary(b"\x00hello\n".to_vec().into()))
        .await
        .expect("stdin");
    if v5 {
        ws.send(Message::Binary(vec![255, 0].into()))
            .await
            .expect("close stdin");
    }
    let out = channels(&mut ws).await;
    assert_eq!(
        (
            out.get(&1).map(String::as_str),
            out.get(&2).map(String::as_str)
        ),
        (Some("hello\n"), Some("done\n")),
        "{out:?}"
    );
    let status: serde_json::Value = serde_json::from_str(&out[&3]).expect("a Status");
    assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
    assert_eq!(status["details"]["causes"][0]["message"], "4", "{status}");
    assert!(
        try_connect(&url, protocol).await.is_err(),
        "the URL is single-use"
    );
    // With a terminal: a resize (channel 4) reaches it, input is echoed, one output.
    let url = client
        .exec(ExecRequest {
            container_id: container.into(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                format!("read line; {STTY_SIZE}; tty; exit 0"),
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
    let (mut ws, _) = connect(&url, "v4.channel.k8s.io").await;
    let mut resize = vec![4u8];
    resize.extend_from_slice(br#"{"Width":100,"Height":40}"#);
    ws.send(Message::Binary(resize.into()))
        .await
        .expect("resize");
    ws.send(Message::Binary(b"\x00go\n".to_vec().into()))
        .await
        .expect("stdin");
    let out = channels(&mut ws).await;
    let terminal = out.get(&1).cloned().unwrap_or_default();
    assert!(
        terminal.contains("40 100") && terminal.contains("/dev/pts/"),
        "{out:?}"
    );
    assert!(
        terminal.contains("go\r\n"),
        "input echoed by the terminal: {out:?}"
    );
    assert!(out[&3].contains("Success"), "{out:?}");
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

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Upgrades a streaming URL to a WebSocket offering `protocol`: the socket and the
/// protocol the server chose.
async fn try_connect(
    url: &str,
    protocol: &str,
) -> Result<(Socket, String), tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.replace("http://", "ws://").into_client_request()?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().expect("header"));
    let (socket, response) = tokio_tungstenite::connect_async(request).await?;
    let chosen = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((socket, chosen))
}

async fn connect(url: &str, protocol: &str) -> (Socket, String) {
    try_connect(url, protocol)
        .await
        .unwrap_or_else(|e| panic!("WebSocket upgrade offering {protocol}: {e}"))
}

/// Everything a stream sends until it closes: the bytes of each channel.
async fn channels(ws: &mut Socket) -> std::collections::BTreeMap<u8, String> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut channels = std::collections::BTreeMap::<u8, String>::new();
    while let Some(Ok(message)) = ws.next().await {
        match message {
            Message::Binary(data) if !data.is_empty() => channels
                .entry(data[0])
                .or_default()
                .push_str(&String::from_utf8_lossy(&data[1..])),
            Message::Close(_) => break,
            _ => {}
        }
    }
    channels
}

/// Attach, as `kubectl attach` and `kubectl run -i` use it. A container created with
/// stdin (`stdin_once`) reads what the client types after it started, its output comes
/// back on channels 1 and 2, and the client's end of input closes the container's
/// stdin, so it exits and the stream ends with success. With a terminal: resize and
/// the terminal's own line discipline.
pub async fn attach(
    client: &mut Client,
    sandbox: &str,
    pod: &PodSandboxConfig,
    base: ContainerConfig,
    protocol: &str,
) {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let attach = |id: &str, stdin: bool, tty: bool, stderr: bool| AttachRequest {
        container_id: id.into(),
        stdin,
        tty,
        stdout: true,
        stderr,
    };
    let mut config = base.clone();
    config.metadata = Some(ContainerMetadata {
        name: "attached".into(),
        attempt: 0,
    });
    config.log_path = "attached.log".into();
    // v4 has no way to end stdin: the container reads one line.
    let v5 = protocol == "v5.channel.k8s.io";
    let script = if v5 {
        "cat; echo bye >&2"
    } else {
        "read line; echo $line; echo bye >&2"
    };
    config.command = vec!["/bin/sh".into(), "-c".into(), script.into()];
    config.stdin = true;
    config.stdin_once = true;
    let id = run(client, sandbox, pod, config).await;
    let url = client
        .attach(attach(&id, true, false, true))
        .await
        .expect("Attach")
        .into_inner()
        .url;
    let (mut ws, _) = connect(&url, protocol).await;
    ws.send(Message::Binary(b"\x00typed\n".to_vec().into()))
        .await
        .expect("stdin");
    if v5 {
        ws.send(Message::Binary(vec![255, 0].into()))
            .await
            .expect("close stdin");
    }
    let out = channels(&mut ws).await;
    assert_eq!(
        (
            out.get(&1).map(String::as_str),
            out.get(&2).map(String::as_str)
        ),
        (Some("typed\n"), Some("bye\n")),
        "{out:?}"
    );
    assert!(out[&3].contains("Success"), "{out:?}");
    let exited = wait_exited(client, &id).await;
    assert_eq!(exited.exit_code, 0, "stdin ended, so cat did: {exited:?}");
    let log = std::fs::read_to_string(&exited.log_path).expect("log");
    assert!(log.contains(" stdout F typed\n"), "{log}");
    // (containerd answers Unknown, skiff FailedPrecondition.)
    client
        .attach(attach(&id, false, false, true))
        .await
        .expect_err("attach to an exited container");

    // A terminal: resized before the shell asks its size; the exit code is the shell's.
    let mut config = base;
    config.metadata = Some(ContainerMetadata {
        name: "terminal".into(),
        attempt: 0,
    });
    config.log_path = "terminal.log".into();
    config.command = vec!["/bin/sh".into()];
    config.stdin = true;
    config.tty = true;
    let id = run(client, sandbox, pod, config).await;
    let refused = client
        .attach(attach(&id, true, true, true))
        .await
        .expect_err("a terminal has no stderr");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let url = client
        .attach(attach(&id, true, true, false))
        .await
        .expect("Attach")
        .into_inner()
        .url;
    let (mut ws, _) = connect(&url, "v4.channel.k8s.io").await;
    let mut resize = vec![4u8];
    resize.extend_from_slice(br#"{"Width":120,"Height":50}"#);
    ws.send(Message::Binary(resize.into()))
        .await
        .expect("resize");
    ws.send(Message::Binary(
        format!("\x00echo $TERM; {STTY_SIZE}; exit 3\n")
            .into_bytes()
            .into(),
    ))
    .await
    .expect("stdin");
    let out = channels(&mut ws).await;
    let terminal = out.get(&1).cloned().unwrap_or_default();
    assert!(
        terminal.contains("\r\n50 120\r\n") && terminal.contains("\r\nxterm\r\n"),
        "{out:?}"
    );
    assert!(out[&3].contains("Success"), "{out:?}");
    assert_eq!(wait_exited(client, &id).await.exit_code, 3);
}
