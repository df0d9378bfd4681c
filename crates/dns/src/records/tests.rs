//! Record formats against the Kubernetes DNS specification (schema 1.1.0).

use super::*;
use serde_json::json;

fn service(namespace: &str, name: &str, spec: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"namespace": namespace, "name": name},
        "spec": spec,
    }))
    .expect("service")
}

fn slice(namespace: &str, service: &str, endpoints: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"namespace": namespace, "name": format!("{service}-abc"),
                     "labels": {SERVICE_NAME_LABEL: service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
    .expect("slice")
}

fn name(text: &str) -> Name {
    Name::from_ascii(text).expect("name")
}

fn records() -> Records {
    let mut r = Records::new("cluster.local", 5).expect("zone");
    let web = service(
        "ns",
        "web",
        json!({"clusterIP": "10.96.0.7", "clusterIPs": ["10.96.0.7"],
               "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                         {"name": "dns", "port": 53, "protocol": "UDP"},
                         {"port": 9000}]}),
    );
    r.set("ns", "web", Some(&web), &[]);
    let db = service(
        "ns",
        "db",
        json!({"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}),
    );
    let endpoints = slice(
        "ns",
        "db",
        json!([
            {"addresses": ["10.244.0.2"], "hostname": "db-0", "conditions": {"ready": true}},
            {"addresses": ["10.244.0.3"], "conditions": {"ready": true}},
            {"addresses": ["10.244.0.4"], "conditions": {"ready": false}},
        ]),
    );
    r.set("ns", "db", Some(&db), &[&endpoints]);
    let external = service(
        "ns",
        "ext",
        json!({"type": "ExternalName", "externalName": "example.test"}),
    );
    r.set("ns", "ext", Some(&external), &[]);
    r
}

fn answers(resolution: Resolution) -> Vec<String> {
    match resolution {
        Resolution::Answer(answers, _) => answers
            .iter()
            .map(|r| format!("{} {}", r.name, r.data))
            .collect(),
        other => panic!("expected an answer, got {other:?}"),
    }
}

#[test]
fn a_cluster_ip_service_has_an_a_record_and_no_aaaa() {
    let r = records();
    assert_eq!(
        answers(r.resolve(&name("web.ns.svc.cluster.local."), RecordType::A)),
        vec!["web.ns.svc.cluster.local. 10.96.0.7"]
    );
    // Case does not matter.
    assert_eq!(
        answers(r.resolve(&name("WEB.Ns.svc.cluster.local."), RecordType::A)).len(),
        1
    );
    assert_eq!(
        r.resolve(&name("web.ns.svc.cluster.local."), RecordType::AAAA),
        Resolution::NoData
    );
    assert_eq!(
        r.resolve(&name("nope.ns.svc.cluster.local."), RecordType::A),
        Resolution::NxDomain
    );
}

#[test]
fn headless_services_resolve_to_ready_endpoints_and_their_hostnames() {
    let r = records();
    assert_eq!(
        answers(r.resolve(&name("db.ns.svc.cluster.local."), RecordType::A)),
        vec![
            "db.ns.svc.cluster.local. 10.244.0.2",
            "db.ns.svc.cluster.local. 10.244.0.3"
        ]
    );
    assert_eq!(
        answers(r.resolve(&name("db-0.db.ns.svc.cluster.local."), RecordType::A)),
        vec!["db-0.db.ns.svc.cluster.local. 10.244.0.2"]
    );
    // Endpoints without a hostname are named by their dashed address.
    assert_eq!(
        answers(r.resolve(&name("10-244-0-3.db.ns.svc.cluster.local."), RecordType::A)).len(),
        1
    );
    // The unready one is not there.
    assert_eq!(
        r.resolve(&name("10-244-0-4.db.ns.svc.cluster.local."), RecordType::A),
        Resolution::NxDomain
    );
}

#[test]
fn srv_records_name_ports_and_targets() {
    let r = records();
    let srv = answers(r.resolve(
        &name("_http._tcp.web.ns.svc.cluster.local."),
        RecordType::SRV,
    ));
    assert_eq!(
        srv,
        vec!["_http._tcp.web.ns.svc.cluster.local. 0 100 80 web.ns.svc.cluster.local."]
    );
    let Resolution::Answer(_, additionals) = r.resolve(
        &name("_http._tcp.web.ns.svc.cluster.local."),
        RecordType::SRV,
    ) else {
        panic!("no answer");
    };
    assert_eq!(additionals.len(), 1, "the target's address comes along");
    let udp = answers(r.resolve(
        &name("_dns._udp.web.ns.svc.cluster.local."),
        RecordType::SRV,
    ));
    assert_eq!(udp.len(), 1);
    // Wrong protocol, unnamed port: no such name.
    assert_eq!(
        r.resolve(
            &name("_dns._tcp.web.ns.svc.cluster.local."),
            RecordType::SRV
        ),
        Resolution::NxDomain
    );
    // `_tcp.web...` exists (it has names below it) but holds nothing.
    assert_eq!(
        r.resolve(&name("_tcp.web.ns.svc.cluster.local."), RecordType::SRV),
        Resolution::NoData
    );
    // Headless: one per endpoint, to its own name, on the endpoint's port.
    let headless = answers(r.resolve(
        &name("_http._tcp.db.ns.svc.cluster.local."),
        RecordType::SRV,
    ));
    assert_eq!(
        headless,
        vec![
            "_http._tcp.db.ns.svc.cluster.local. 0 50 8080 db-0.db.ns.svc.cluster.local.",
            "_http._tcp.db.ns.svc.cluster.local. 0 50 8080 10-244-0-3.db.ns.svc.cluster.local."
        ]
    );
    // An A query at an SRV name is NODATA.
    assert_eq!(
        r.resolve(&name("_http._tcp.web.ns.svc.cluster.local."), RecordType::A),
        Resolution::NoData
    );
}

#[test]
fn ptr_records_name_cluster_ips_and_headless_endpoints() {
    let r = records();
    assert_eq!(
        answers(r.resolve(&name("7.0.96.10.in-addr.arpa."), RecordType::PTR)),
        vec!["7.0.96.10.in-addr.arpa. web.ns.svc.cluster.local."]
    );
    assert_eq!(
        answers(r.resolve(&name("2.0.244.10.in-addr.arpa."), RecordType::PTR)),
        vec!["2.0.244.10.in-addr.arpa. db-0.db.ns.svc.cluster.local."]
    );
    // Addresses the cluster does not know are someone else's.
    assert_eq!(
        r.resolve(&name("1.1.168.192.in-addr.arpa."), RecordType::PTR),
        Resolution::Forward
    );
}

#[test]
fn external_names_alias_and_other_names_forward() {
    let r = records();
    match r.resolve(&name("ext.ns.svc.cluster.local."), RecordType::A) {
        Resolution::Alias(cname, target) => {
            assert_eq!(cname.data.to_string(), "example.test.");
            assert_eq!(target, name("example.test."));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        answers(r.resolve(&name("ext.ns.svc.cluster.local."), RecordType::CNAME)).len(),
        1
    );
    assert_eq!(
        r.resolve(&name("example.test."), RecordType::A),
        Resolution::Forward
    );
}

#[test]
fn existing_names_without_records_are_nodata_and_the_rest_nxdomain() {
    let r = records();
    for existing in [
        "cluster.local.",
        "svc.cluster.local.",
        "ns.svc.cluster.local.",
        "pod.cluster.local.",
    ] {
        assert_eq!(
            r.resolve(&name(existing), RecordType::A),
            Resolution::NoData,
            "{existing}"
        );
    }
    for missing in [
        "other.svc.cluster.local.",
        "x.web.ns.svc.cluster.local.",
        "web.ns.cluster.local.",
        "web.ns.svc.cluster.local.ns.svc.cluster.local.",
        "a.b.c.d.e.f.cluster.local.",
    ] {
        assert_eq!(
            r.resolve(&name(missing), RecordType::A),
            Resolution::NxDomain,
            "{missing}"
        );
    }
    assert_eq!(
        answers(r.resolve(&name("dns-version.cluster.local."), RecordType::TXT)),
        vec!["dns-version.cluster.local. 1.1.0"]
    );
    assert_eq!(
        answers(r.resolve(&name("10-244-0-9.ns.pod.cluster.local."), RecordType::A)),
        vec!["10-244-0-9.ns.pod.cluster.local. 10.244.0.9"]
    );
}

#[test]
fn a_removed_service_takes_its_names_and_addresses_along() {
    let mut r = records();
    r.set("ns", "web", None, &[]);
    assert_eq!(
        r.resolve(&name("web.ns.svc.cluster.local."), RecordType::A),
        Resolution::NxDomain
    );
    assert_eq!(
        r.resolve(&name("7.0.96.10.in-addr.arpa."), RecordType::PTR),
        Resolution::Forward
    );
    r.set("ns", "db", None, &[]);
    r.set("ns", "ext", None, &[]);
    assert_eq!(
        r.resolve(&name("ns.svc.cluster.local."), RecordType::A),
        Resolution::NxDomain,
        "a namespace without Services is no name"
    );
}
