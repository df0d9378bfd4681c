//! A bounded fuzz run of the authentication and authorization parsers, in the test
//! suite (stable Rust has no cargo-fuzz): mutated JWTs, certificates, token files,
//! Authorization headers and request paths must never panic, and a token or
//! certificate that was changed must never be accepted as it was. The seed is fixed
//! (repeatable in CI); `SKIFF_FUZZ_ITERATIONS` runs longer locally.

use axum::http::{HeaderMap, HeaderValue, Method, header};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

use crate::authn::{StaticTokens, bearer, certificate_user};
use crate::authz::Attributes;
use crate::tokens::Issuer;

fn iterations() -> usize {
    std::env::var("SKIFF_FUZZ_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000)
}

/// One random change: flip a bit, drop, duplicate or insert a byte, truncate, or
/// splice a fragment that parsers treat specially.
fn mutate(rng: &mut StdRng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    let rounds = rng.random_range(1..4);
    for _ in 0..rounds {
        let at = if out.is_empty() {
            0
        } else {
            rng.random_range(0..out.len())
        };
        match rng.random_range(0..6) {
            0 if !out.is_empty() => out[at] ^= 1 << rng.random_range(0..8),
            1 if !out.is_empty() => {
                out.remove(at);
            }
            2 if !out.is_empty() => {
                let b = out[at];
                out.insert(at, b);
            }
            3 => out.insert(at, rng.random()),
            4 => out.truncate(at),
            _ => {
                const SPECIAL: [&[u8]; 8] = [b".", b"=", b"\"", b",", b"%", b"\0", b"\xff", b"{}"];
                let piece = SPECIAL[rng.random_range(0..SPECIAL.len())];
                for (i, b) in piece.iter().enumerate() {
                    out.insert((at + i).min(out.len()), *b);
                }
            }
        }
    }
    out
}

#[test]
fn tokens_certificates_and_headers_survive_mutation() {
    use rcgen::PublicKeyData;
    let mut rng = StdRng::seed_from_u64(0x5eed_cafe);
    let key = rcgen::KeyPair::generate().expect("key");
    let issuer = Issuer::new(
        &key.serialize_der(),
        &key.subject_public_key_info(),
        key.public_key_raw(),
        "https://kubernetes.default.svc.cluster.local",
    )
    .expect("issuer");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let token = issuer
        .sign(&json!({
            "iss": "https://kubernetes.default.svc.cluster.local",
            "aud": ["https://kubernetes.default.svc.cluster.local"],
            "sub": "system:serviceaccount:default:app",
            "exp": now + 3600, "iat": now, "nbf": now,
        }))
        .expect("token");
    assert!(issuer.verify(&token, None).is_ok());
    let cert = rcgen::CertificateParams::new(vec!["user".to_string()])
        .and_then(|mut p| {
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "alice");
            p.distinguished_name
                .push(rcgen::DnType::OrganizationName, "dev");
            p.self_signed(&key)
        })
        .expect("certificate");
    let der = cert.der().to_vec();
    assert_eq!(
        certificate_user(&der).map(|u| u.username),
        Some("alice".into())
    );
    let token_file = b"t1,alice,1,\"a,b\"\nt2,bob,2\n";
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .and_then(|p| p.serialize_request(&key))
        .and_then(|r| r.pem())
        .expect("certificate request");
    let bootstrap = b"abcdef.0123456789abcdef";
    let paths = [
        "/api/v1/namespaces/ns/pods/p/exec",
        "/apis/apps/v1/watch/namespaces/x/deployments",
        "/healthz",
    ];
    for _ in 0..iterations() {
        // A changed token never verifies (and never panics).
        let changed = mutate(&mut rng, token.as_bytes());
        if let Ok(text) = std::str::from_utf8(&changed)
            && text != token
        {
            assert!(issuer.verify(text, None).is_err(), "accepted {text:?}");
        }
        // Certificates: any bytes parse or not, without panicking.
        let _ = certificate_user(&mutate(&mut rng, &der));
        // Bootstrap tokens and certificate requests (CSR bodies come from any user).
        let changed = mutate(&mut rng, bootstrap);
        if let Some((id, secret)) = crate::join::parse_token(&String::from_utf8_lossy(&changed)) {
            assert!(id.len() == 6 && secret.len() == 16);
        }
        let _ = crate::registry::certificates::request_subject(&String::from_utf8_lossy(&mutate(
            &mut rng,
            csr.as_bytes(),
        )));
        // Token files: parsed or refused with a message.
        let _ = StaticTokens::parse(&String::from_utf8_lossy(&mutate(&mut rng, token_file)));
        // Authorization headers.
        let value = mutate(&mut rng, format!("Bearer {token}").as_bytes());
        if let Ok(value) = HeaderValue::from_bytes(&value) {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value);
            let _ = bearer(&headers);
        }
        // Request paths and queries become attributes or a non-resource path.
        let pick = rng.random_range(0..paths.len());
        let path = mutate(&mut rng, paths[pick].as_bytes());
        let path = String::from_utf8_lossy(&path);
        let query = [("fieldSelector".to_string(), path.to_string())].into();
        for method in [Method::GET, Method::POST, Method::DELETE] {
            let _ = Attributes::of(&method, &path, &query);
        }
    }
}
