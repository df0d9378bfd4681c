//! Every kind the API server serves, from discovery: what the namespace controller
//! empties and the garbage collector watches over.

use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope, verbs};

pub struct Kind {
    pub resource: ApiResource,
    pub namespaced: bool,
    pub deletable: bool,
}

/// The listable kinds, preferred versions only.
pub async fn discover(client: &kube::Client) -> Result<Vec<Kind>, kube::Error> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut kinds = Vec::new();
    for group in discovery.groups() {
        for (resource, caps) in group.recommended_resources() {
            let ApiCapabilities { scope, .. } = &caps;
            if !caps.supports_operation(verbs::LIST) {
                continue;
            }
            kinds.push(Kind {
                namespaced: *scope == Scope::Namespaced,
                deletable: caps.supports_operation(verbs::DELETE),
                resource,
            });
        }
    }
    Ok(kinds)
}
