//! URL query strings as Kubernetes endpoints read them: repeated keys kept in order
//! (`command=sh&command=-c` for exec), values percent-decoded, `+` as a space.

/// The request headers a connection upgrade (WebSocket, SPDY) needs on its way
/// through a proxy.
pub const UPGRADE_HEADERS: [&str; 7] = [
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "x-stream-protocol-version",
];

/// The (key, value) pairs of a query string.
pub fn pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key), decode(value))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_and_encodings() {
        assert_eq!(
            pairs("command=sh&command=-c&command=echo+a%20b%3B&stdin=true&x"),
            [
                ("command".into(), "sh".into()),
                ("command".into(), "-c".into()),
                ("command".into(), "echo a b;".into()),
                ("stdin".into(), "true".into()),
                ("x".into(), String::new()),
            ]
        );
        assert_eq!(pairs("a=%zz%"), [("a".to_string(), "%zz%".to_string())]);
    }
}
