//! The etcd backend against a real etcd that requires TLS client certificates, and with
//! several endpoints of which one is down. Certificates are made with the `openssl` CLI.

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use futures::StreamExt;
use skiff_storage::etcd::EtcdStore;
use skiff_storage::etcd::local::{LocalEtcd, LocalTls};
use skiff_storage::{KeyRange, Store};

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl {args:?} failed");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it.
fn make_pki(dir: &Path) -> LocalTls {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "1",
                "-subj",
                "/CN=skiff-test-ca",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .expect("ext");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
    for (name, cn) in [("server", "127.0.0.1"), ("client", "skiff-apiserver")] {
        openssl(
            dir,
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    &format!("/CN={cn}"),
                ],
            ]
            .concat(),
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
    }
    LocalTls {
        ca_file: dir.join("ca.crt"),
        cert_file: dir.join("server.crt"),
        key_file: dir.join("server.key"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_etcd_serves_clients_with_certificates_and_refuses_others() {
    let pki = tempfile::tempdir().expect("tempdir");
    let tls = make_pki(pki.path());
    let etcd = LocalEtcd::start_with(Some(tls))
        .await
        .expect("start TLS etcd");
    assert!(etcd.endpoint().starts_with("https://"));

    let mut config = etcd.config("/tls");
    config.cert_file = Some(pki.path().join("client.crt"));
    config.key_file = Some(pki.path().join("client.key"));
    let store = EtcdStore::connect(&config)
        .await
        .expect("connect with a client certificate");
    let mut watch = store
        .watch(&KeyRange::prefix("/x/"), 0)
        .await
        .expect("watch");
    let rev = store
        .create(b"/x/a", Bytes::from_static(b"1"))
        .await
        .expect("create over TLS");
    let event = watch.next().await.expect("event").expect("watch over TLS");
    assert_eq!(event.revision(), rev);
    assert_eq!(
        store
            .get(b"/x/a", None)
            .await
            .expect("get")
            .expect("present")
            .value,
        Bytes::from_static(b"1")
    );

    // Without a client certificate the server refuses the handshake.
    let mut anonymous = config.clone();
    anonymous.cert_file = None;
    anonymous.key_file = None;
    let refused = match EtcdStore::connect(&anonymous).await {
        Err(_) => true,
        Ok(store) => tokio::time::timeout(std::time::Duration::from_secs(10), store.health())
            .await
            .map_or(true, |r| r.is_err()),
    };
    assert!(refused, "a client without a certificate must be refused");

    // Half a key pair is a configuration error, said before any connection.
    let mut half = config.clone();
    half.key_file = None;
    let error = EtcdStore::connect(&half).await.err().expect("refused");
    assert!(error.to_string().contains("TLS"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_endpoints_keep_working_when_one_is_down() {
    let etcd = LocalEtcd::start().await.expect("start etcd");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_endpoint = format!("http://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let mut config = etcd.config("/multi");
    config.endpoints = vec![dead_endpoint, etcd.endpoint().to_string()];
    let store = EtcdStore::connect(&config).await.expect("connect");
    // Enough requests that, picked at random, many would land on the dead endpoint.
    for i in 0..100 {
        store
            .create(format!("/k/{i}").as_bytes(), Bytes::from_static(b"v"))
            .await
            .expect("every write reaches the live endpoint");
    }
    let all = store
        .range(&KeyRange::prefix("/k/"), None, None)
        .await
        .expect("range");
    assert_eq!(all.kvs.len(), 100);
    for _ in 0..100 {
        assert!(store.get(b"/k/1", None).await.expect("get").is_some());
    }
}
