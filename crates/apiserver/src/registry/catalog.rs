//! Every resource the server serves: one row each. Adding a kind is adding a row (and
//! its printed columns in `columns.rs`); the verbs are generic.
//!
//! Patch strategies mirror the `patchStrategy`/`patchMergeKey` tags of upstream's Go
//! types (k8s.io/api); subresources and generation follow upstream's strategies.

use serde_json::Value;

use super::columns as col;
use super::defaults::*;
use super::{NameRule, Resource};
use crate::table::{AGE, Column};
use k8s_openapi::api::{apps, batch, coordination, core, discovery, policy, rbac, storage};

fn decode_as<T: serde::de::DeserializeOwned + serde::Serialize>(
    value: &Value,
) -> Result<Value, String> {
    let typed = serde_json::from_value::<T>(value.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

fn schema_of<T: schemars::JsonSchema>(generator: &mut schemars::SchemaGenerator) -> Value {
    generator.subschema_for::<T>().to_value()
}

/// A pod spec's merge keys, under a prefix (`spec.` for pods, `spec.template.spec.` for
/// workloads).
macro_rules! pod_spec {
    ($p:literal $(, $extra:expr)* $(,)?) => {
        &[
            (concat!($p, "volumes"), Some("name")),
            (concat!($p, "imagePullSecrets"), Some("name")),
            (concat!($p, "hostAliases"), Some("ip")),
            (concat!($p, "topologySpreadConstraints"), Some("topologyKey")),
            (concat!($p, "resourceClaims"), Some("name")),
            (concat!($p, "schedulingGates"), Some("name")),
            (concat!($p, "containers"), Some("name")),
            (concat!($p, "containers.ports"), Some("containerPort")),
            (concat!($p, "containers.env"), Some("name")),
            (concat!($p, "containers.volumeMounts"), Some("mountPath")),
            (concat!($p, "containers.volumeDevices"), Some("devicePath")),
            (concat!($p, "initContainers"), Some("name")),
            (concat!($p, "initContainers.ports"), Some("containerPort")),
            (concat!($p, "initContainers.env"), Some("name")),
            (concat!($p, "initContainers.volumeMounts"), Some("mountPath")),
            (concat!($p, "initContainers.volumeDevices"), Some("devicePath")),
            (concat!($p, "ephemeralContainers"), Some("name")),
            (concat!($p, "ephemeralContainers.env"), Some("name")),
            (concat!($p, "ephemeralContainers.volumeMounts"), Some("mountPath")),
            $($extra,)*
        ]
    };
}

const BASE: Resource = Resource {
    group: "",
    version: "v1",
    kind: "",
    plural: "",
    singular: "",
    namespaced: true,
    short_names: &[],
    categories: &[],
    name_rule: NameRule::DnsSubdomain,
    defaults: no_defaults,
    patch_strategies: &[],
    columns: &[],
    hide_name: false,
    status: false,
    generation: false,
    clear_status_on_create: false,
    scale: false,
    graceful_deletion: false,
    allocates_ips: false,
    returns_deleted_object: false,
    storage_prefix: None,
    to_storage: None,
    from_storage: None,
    decode: decode_as::<core::v1::ConfigMap>,
    schema: schema_of::<core::v1::ConfigMap>,
};

const fn c(name: &'static str, description: &'static str, cell: fn(&Value) -> Value) -> Column {
    Column {
        name,
        kind: "string",
        description,
        priority: 0,
        cell,
    }
}

const fn wide(name: &'static str, description: &'static str, cell: fn(&Value) -> Value) -> Column {
    Column {
        name,
        kind: "string",
        description,
        priority: 1,
        cell,
    }
}

const CONDITIONS: (&str, Option<&str>) = ("status.conditions", Some("type"));

pub(crate) static CATALOG: &[Resource] = &[
    // core/v1
    Resource {
        kind: "Namespace",
        plural: "namespaces",
        singular: "namespace",
        namespaced: false,
        short_names: &["ns"],
        name_rule: NameRule::DnsLabel,
        defaults: namespace_defaults,
        status: true,
        columns: &[c(
            "Status",
            "The status of the namespace",
            col::namespace_phase,
        )],
        patch_strategies: &[CONDITIONS],
        decode: decode_as::<core::v1::Namespace>,
        schema: schema_of::<core::v1::Namespace>,
        ..BASE
    },
    Resource {
        kind: "ConfigMap",
        plural: "configmaps",
        singular: "configmap",
        short_names: &["cm"],
        columns: &[c("Data", "Number of data entries", col::data_count)],
        decode: decode_as::<core::v1::ConfigMap>,
        schema: schema_of::<core::v1::ConfigMap>,
        ..BASE
    },
    Resource {
        kind: "Secret",
        plural: "secrets",
        singular: "secret",
        defaults: secret_defaults,
        columns: &[
            c("Type", "The type of the secret", col::secret_type),
            c("Data", "Number of data entries", col::data_count),
        ],
        decode: decode_as::<core::v1::Secret>,
        schema: schema_of::<core::v1::Secret>,
        ..BASE
    },
    Resource {
        kind: "ServiceAccount",
        plural: "serviceaccounts",
        singular: "serviceaccount",
        short_names: &["sa"],
        patch_strategies: &[("secrets", Some("name"))],
        columns: &[c("Secrets", "Number of secrets", col::sa_secrets)],
        decode: decode_as::<core::v1::ServiceAccount>,
        schema: schema_of::<core::v1::ServiceAccount>,
        ..BASE
    },
    Resource {
        kind: "Pod",
        returns_deleted_object: true,
        graceful_deletion: true,
        clear_status_on_create: true,
        plural: "pods",
        singular: "pod",
        short_names: &["po"],
        categories: &["all"],
        status: true,
        defaults: pod_defaults,
        patch_strategies: pod_spec!(
            "spec.",
            CONDITIONS,
            ("status.podIPs", Some("ip")),
            ("status.hostIPs", Some("ip"))
        ),
        columns: &[
            c(
                "Ready",
                "The aggregate readiness state of this pod for accepting traffic.",
                col::pod_ready,
            ),
            c(
                "Status",
                "The aggregate status of the containers in this pod.",
                col::pod_status,
            ),
            c(
                "Restarts",
                "The number of times the containers in this pod have been restarted.",
                col::pod_restarts,
            ),
            AGE,
            wide("IP", "IP address allocated to the pod.", col::pod_ip),
            wide(
                "Node",
                "Name of the Node this pod is assigned to.",
                col::pod_node,
            ),
            wide(
                "Nominated Node",
                "Name of the node nominated to run this pod (preemption).",
                col::pod_nominated,
            ),
            wide(
                "Readiness Gates",
                "The readiness gates of this pod.",
                col::pod_readiness_gates,
            ),
        ],
        decode: decode_as::<core::v1::Pod>,
        schema: schema_of::<core::v1::Pod>,
        ..BASE
    },
    Resource {
        kind: "Service",
        returns_deleted_object: true,
        allocates_ips: true,
        clear_status_on_create: true,
        plural: "services",
        singular: "service",
        short_names: &["svc"],
        categories: &["all"],
        name_rule: NameRule::DnsLabel,
        status: true,
        defaults: service_defaults,
        patch_strategies: &[("spec.ports", Some("port")), CONDITIONS],
        columns: &[
            c("Type", "The type of service.", col::service_type),
            c(
                "Cluster-IP",
                "The cluster IP of the service.",
                col::service_cluster_ip,
            ),
            c(
                "External-IP",
                "External IPs of the service.",
                col::service_external_ip,
            ),
            c("Port(s)", "The ports of the service.", col::service_ports),
            AGE,
            wide(
                "Selector",
                "The selector of the service.",
                col::selector_map,
            ),
        ],
        decode: decode_as::<core::v1::Service>,
        schema: schema_of::<core::v1::Service>,
        ..BASE
    },
    Resource {
        kind: "Endpoints",
        plural: "endpoints",
        singular: "endpoints",
        short_names: &["ep"],
        columns: &[c("Endpoints", "Endpoints of the service.", col::endpoints)],
        decode: decode_as::<core::v1::Endpoints>,
        schema: schema_of::<core::v1::Endpoints>,
        ..BASE
    },
    Resource {
        kind: "Node",
        plural: "nodes",
        singular: "node",
        namespaced: false,
        short_names: &["no"],
        status: true,
        patch_strategies: &[
            ("spec.podCIDRs", None),
            CONDITIONS,
            ("status.addresses", Some("type")),
        ],
        columns: &[
            c("Status", "The status of the node.", col::node_status),
            c("Roles", "The roles of the node.", col::node_roles),
            AGE,
            c("Version", "Kubelet version.", col::node_version),
            wide(
                "Internal-IP",
                "The node's internal IP.",
                col::node_internal_ip,
            ),
            wide(
                "External-IP",
                "The node's external IP.",
                col::node_external_ip,
            ),
            wide("OS-Image", "The OS image.", col::node_os_image),
            wide("Kernel-Version", "The kernel version.", col::node_kernel),
            wide(
                "Container-Runtime",
                "The container runtime version.",
                col::node_runtime,
            ),
        ],
        decode: decode_as::<core::v1::Node>,
        schema: schema_of::<core::v1::Node>,
        ..BASE
    },
    Resource {
        kind: "Event",
        plural: "events",
        singular: "event",
        short_names: &["ev"],
        hide_name: true,
        columns: &[
            c(
                "Last Seen",
                "Time since the event was last seen.",
                col::event_last_seen,
            ),
            c("Type", "Type of the event.", col::event_type),
            c("Reason", "Reason of the event.", col::event_reason),
            c(
                "Object",
                "The object the event is about.",
                col::event_object,
            ),
            c("Message", "The event's message.", col::event_message),
        ],
        decode: decode_as::<core::v1::Event>,
        schema: schema_of::<core::v1::Event>,
        ..BASE
    },
    Resource {
        kind: "LimitRange",
        plural: "limitranges",
        singular: "limitrange",
        short_names: &["limits"],
        defaults: super::limit_range::limit_range_defaults,
        columns: &[c("Created At", "Creation time.", col::created_at)],
        decode: decode_as::<core::v1::LimitRange>,
        schema: schema_of::<core::v1::LimitRange>,
        ..BASE
    },
    Resource {
        kind: "ResourceQuota",
        clear_status_on_create: true,
        plural: "resourcequotas",
        singular: "resourcequota",
        short_names: &["quota"],
        status: true,
        decode: decode_as::<core::v1::ResourceQuota>,
        schema: schema_of::<core::v1::ResourceQuota>,
        ..BASE
    },
    Resource {
        kind: "PersistentVolume",
        defaults: persistent_volume_defaults,
        clear_status_on_create: true,
        plural: "persistentvolumes",
        singular: "persistentvolume",
        namespaced: false,
        short_names: &["pv"],
        status: true,
        columns: &[
            c("Capacity", "Storage capacity.", col::pv_capacity),
            c("Access Modes", "Access modes.", col::access_modes),
            c("Reclaim Policy", "Reclaim policy.", col::pv_reclaim),
            c("Status", "Phase.", col::phase),
            c("Claim", "Bound claim.", col::pv_claim),
            c("StorageClass", "Storage class.", col::storage_class),
        ],
        decode: decode_as::<core::v1::PersistentVolume>,
        schema: schema_of::<core::v1::PersistentVolume>,
        ..BASE
    },
    Resource {
        kind: "PersistentVolumeClaim",
        defaults: persistent_volume_claim_defaults,
        clear_status_on_create: true,
        plural: "persistentvolumeclaims",
        singular: "persistentvolumeclaim",
        short_names: &["pvc"],
        status: true,
        patch_strategies: &[CONDITIONS],
        columns: &[
            c("Status", "Phase.", col::phase),
            c("Volume", "Bound volume.", col::pvc_volume),
            c("Capacity", "Storage capacity.", col::pvc_capacity),
            c("Access Modes", "Access modes.", col::access_modes),
            c("StorageClass", "Storage class.", col::storage_class),
        ],
        decode: decode_as::<core::v1::PersistentVolumeClaim>,
        schema: schema_of::<core::v1::PersistentVolumeClaim>,
        ..BASE
    },
    // apps/v1
    Resource {
        group: "apps",
        kind: "Deployment",
        scale: true,
        clear_status_on_create: true,
        plural: "deployments",
        singular: "deployment",
        short_names: &["deploy"],
        categories: &["all"],
        status: true,
        generation: true,
        defaults: deployment_defaults,
        patch_strategies: pod_spec!("spec.template.spec.", CONDITIONS),
        columns: &[
            c(
                "Ready",
                "Number of ready pods out of desired.",
                col::ready_of_replicas,
            ),
            c(
                "Up-to-date",
                "Pods updated to the latest template.",
                col::updated_replicas,
            ),
            c("Available", "Available pods.", col::available_replicas),
            AGE,
            wide("Containers", "Container names.", col::template_containers),
            wide("Images", "Container images.", col::template_images),
            wide("Selector", "Label selector.", col::label_selector),
        ],
        decode: decode_as::<apps::v1::Deployment>,
        schema: schema_of::<apps::v1::Deployment>,
        ..BASE
    },
    Resource {
        group: "apps",
        kind: "ReplicaSet",
        scale: true,
        clear_status_on_create: true,
        plural: "replicasets",
        singular: "replicaset",
        short_names: &["rs"],
        categories: &["all"],
        status: true,
        generation: true,
        defaults: replica_set_defaults,
        patch_strategies: pod_spec!("spec.template.spec.", CONDITIONS),
        columns: &[
            c("Desired", "Desired pods.", col::spec_replicas),
            c("Current", "Current pods.", col::status_replicas),
            c("Ready", "Ready pods.", col::ready_replicas),
            AGE,
            wide("Containers", "Container names.", col::template_containers),
            wide("Images", "Container images.", col::template_images),
            wide("Selector", "Label selector.", col::label_selector),
        ],
        decode: decode_as::<apps::v1::ReplicaSet>,
        schema: schema_of::<apps::v1::ReplicaSet>,
        ..BASE
    },
    Resource {
        group: "apps",
        kind: "StatefulSet",
        scale: true,
        clear_status_on_create: true,
        plural: "statefulsets",
        singular: "statefulset",
        short_names: &["sts"],
        categories: &["all"],
        status: true,
        generation: true,
        defaults: stateful_set_defaults,
        patch_strategies: pod_spec!("spec.template.spec.", CONDITIONS),
        columns: &[
            c(
                "Ready",
                "Ready pods out of desired.",
                col::ready_of_replicas,
            ),
            AGE,
            wide("Containers", "Container names.", col::template_containers),
            wide("Images", "Container images.", col::template_images),
        ],
        decode: decode_as::<apps::v1::StatefulSet>,
        schema: schema_of::<apps::v1::StatefulSet>,
        ..BASE
    },
    Resource {
        group: "apps",
        kind: "DaemonSet",
        defaults: daemon_set_defaults,
        clear_status_on_create: true,
        plural: "daemonsets",
        singular: "daemonset",
        short_names: &["ds"],
        categories: &["all"],
        status: true,
        generation: true,
        patch_strategies: pod_spec!("spec.template.spec.", CONDITIONS),
        columns: &[
            c("Desired", "Desired pods.", col::ds_desired),
            c("Current", "Current pods.", col::ds_current),
            c("Ready", "Ready pods.", col::ds_ready),
            c("Up-to-date", "Updated pods.", col::ds_updated),
            c("Available", "Available pods.", col::ds_available),
            c("Node Selector", "Node selector.", col::ds_node_selector),
            AGE,
            wide("Containers", "Container names.", col::template_containers),
            wide("Images", "Container images.", col::template_images),
            wide("Selector", "Label selector.", col::label_selector),
        ],
        decode: decode_as::<apps::v1::DaemonSet>,
        schema: schema_of::<apps::v1::DaemonSet>,
        ..BASE
    },
    Resource {
        group: "apps",
        kind: "ControllerRevision",
        plural: "controllerrevisions",
        singular: "controllerrevision",
        columns: &[
            c(
                "Controller",
                "The owning controller.",
                col::revision_controller,
            ),
            c("Revision", "The revision number.", col::revision_number),
        ],
        decode: decode_as::<apps::v1::ControllerRevision>,
        schema: schema_of::<apps::v1::ControllerRevision>,
        ..BASE
    },
    // batch/v1
    Resource {
        group: "batch",
        kind: "Job",
        defaults: job_defaults,
        clear_status_on_create: true,
        plural: "jobs",
        singular: "job",
        categories: &["all"],
        status: true,
        generation: true,
        patch_strategies: pod_spec!("spec.template.spec.", CONDITIONS),
        columns: &[
            c(
                "Completions",
                "Succeeded pods out of completions.",
                col::job_completions,
            ),
            AGE,
            wide("Containers", "Container names.", col::template_containers),
            wide("Images", "Container images.", col::template_images),
        ],
        decode: decode_as::<batch::v1::Job>,
        schema: schema_of::<batch::v1::Job>,
        ..BASE
    },
    Resource {
        group: "batch",
        kind: "CronJob",
        defaults: cron_job_defaults,
        clear_status_on_create: true,
        plural: "cronjobs",
        singular: "cronjob",
        short_names: &["cj"],
        categories: &["all"],
        status: true,
        generation: true,
        patch_strategies: pod_spec!("spec.jobTemplate.spec.template.spec."),
        columns: &[
            c("Schedule", "The schedule.", col::cron_schedule),
            c("Suspend", "Whether it is suspended.", col::cron_suspend),
            c("Active", "Active jobs.", col::cron_active),
            c(
                "Last Schedule",
                "Time since the last schedule.",
                col::cron_last_schedule,
            ),
        ],
        decode: decode_as::<batch::v1::CronJob>,
        schema: schema_of::<batch::v1::CronJob>,
        ..BASE
    },
    // events.k8s.io/v1: the same events as core/v1, in the newer shape (kube-rs's
    // Recorder writes these).
    Resource {
        group: "events.k8s.io",
        kind: "Event",
        plural: "events",
        singular: "event",
        short_names: &["ev"],
        hide_name: true,
        storage_prefix: Some("/registry/events/"),
        to_storage: Some(super::events::to_core),
        from_storage: Some(super::events::from_core),
        columns: &[
            c(
                "Last Seen",
                "Time since the event was last seen.",
                col::event_last_seen,
            ),
            c("Type", "Type of the event.", col::event_type),
            c("Reason", "Reason of the event.", col::event_reason),
            c(
                "Object",
                "The object the event is about.",
                col::event_object,
            ),
            c("Message", "The event's message.", col::event_message),
        ],
        decode: decode_as::<k8s_openapi::api::events::v1::Event>,
        schema: schema_of::<k8s_openapi::api::events::v1::Event>,
        ..BASE
    },
    // certificates.k8s.io/v1
    Resource {
        group: "certificates.k8s.io",
        kind: "CertificateSigningRequest",
        plural: "certificatesigningrequests",
        singular: "certificatesigningrequest",
        namespaced: false,
        short_names: &["csr"],
        status: true,
        clear_status_on_create: true,
        patch_strategies: &[CONDITIONS],
        columns: &[
            AGE,
            c(
                "SignerName",
                "The signer the request is for.",
                super::certificates::signer_column,
            ),
            c(
                "Requestor",
                "Who made the request.",
                super::certificates::requestor_column,
            ),
            c(
                "RequestedDuration",
                "How long the certificate should be valid.",
                super::certificates::duration_column,
            ),
            c(
                "Condition",
                "Approved, denied, issued or pending.",
                super::certificates::condition_column,
            ),
        ],
        decode: decode_as::<k8s_openapi::api::certificates::v1::CertificateSigningRequest>,
        schema: schema_of::<k8s_openapi::api::certificates::v1::CertificateSigningRequest>,
        ..BASE
    },
    // coordination.k8s.io/v1
    Resource {
        group: "coordination.k8s.io",
        kind: "Lease",
        plural: "leases",
        singular: "lease",
        columns: &[c("Holder", "The holder of the lease.", col::lease_holder)],
        decode: decode_as::<coordination::v1::Lease>,
        schema: schema_of::<coordination::v1::Lease>,
        ..BASE
    },
    // discovery.k8s.io/v1
    Resource {
        group: "discovery.k8s.io",
        kind: "EndpointSlice",
        plural: "endpointslices",
        singular: "endpointslice",
        columns: &[
            c("AddressType", "The address type.", col::slice_address_type),
            c("Ports", "The ports.", col::slice_ports),
            c("Endpoints", "The endpoints.", col::slice_endpoints),
        ],
        decode: decode_as::<discovery::v1::EndpointSlice>,
        schema: schema_of::<discovery::v1::EndpointSlice>,
        ..BASE
    },
    // policy/v1
    Resource {
        group: "policy",
        kind: "PodDisruptionBudget",
        clear_status_on_create: true,
        plural: "poddisruptionbudgets",
        singular: "poddisruptionbudget",
        short_names: &["pdb"],
        status: true,
        generation: true,
        patch_strategies: &[CONDITIONS],
        columns: &[
            c(
                "Min Available",
                "Minimum available pods.",
                col::pdb_min_available,
            ),
            c(
                "Max Unavailable",
                "Maximum unavailable pods.",
                col::pdb_max_unavailable,
            ),
            c(
                "Allowed Disruptions",
                "Disruptions allowed now.",
                col::pdb_allowed,
            ),
        ],
        decode: decode_as::<policy::v1::PodDisruptionBudget>,
        schema: schema_of::<policy::v1::PodDisruptionBudget>,
        ..BASE
    },
    // rbac.authorization.k8s.io/v1 (enforced by `authz`)
    Resource {
        group: "rbac.authorization.k8s.io",
        kind: "Role",
        plural: "roles",
        singular: "role",
        columns: &[c("Created At", "Creation time.", col::created_at)],
        decode: decode_as::<rbac::v1::Role>,
        schema: schema_of::<rbac::v1::Role>,
        name_rule: NameRule::PathSegment,
        ..BASE
    },
    Resource {
        group: "rbac.authorization.k8s.io",
        kind: "RoleBinding",
        plural: "rolebindings",
        singular: "rolebinding",
        columns: &[c("Role", "The bound role.", col::binding_role)],
        decode: decode_as::<rbac::v1::RoleBinding>,
        schema: schema_of::<rbac::v1::RoleBinding>,
        name_rule: NameRule::PathSegment,
        ..BASE
    },
    Resource {
        group: "rbac.authorization.k8s.io",
        kind: "ClusterRole",
        plural: "clusterroles",
        singular: "clusterrole",
        namespaced: false,
        columns: &[c("Created At", "Creation time.", col::created_at)],
        decode: decode_as::<rbac::v1::ClusterRole>,
        schema: schema_of::<rbac::v1::ClusterRole>,
        name_rule: NameRule::PathSegment,
        ..BASE
    },
    Resource {
        group: "rbac.authorization.k8s.io",
        kind: "ClusterRoleBinding",
        plural: "clusterrolebindings",
        singular: "clusterrolebinding",
        namespaced: false,
        columns: &[c("Role", "The bound role.", col::binding_role)],
        decode: decode_as::<rbac::v1::ClusterRoleBinding>,
        schema: schema_of::<rbac::v1::ClusterRoleBinding>,
        name_rule: NameRule::PathSegment,
        ..BASE
    },
    // scheduling.k8s.io/v1
    Resource {
        group: "scheduling.k8s.io",
        kind: "PriorityClass",
        plural: "priorityclasses",
        singular: "priorityclass",
        namespaced: false,
        short_names: &["pc"],
        defaults: priority_class_defaults,
        columns: &[
            c("Value", "The priority of pods of the class.", col::pc_value),
            c(
                "Global-Default",
                "Whether pods without a class get this one.",
                col::pc_global_default,
            ),
            AGE,
            c(
                "PreemptionPolicy",
                "Whether pods of the class preempt others.",
                col::pc_preemption_policy,
            ),
        ],
        decode: decode_as::<k8s_openapi::api::scheduling::v1::PriorityClass>,
        schema: schema_of::<k8s_openapi::api::scheduling::v1::PriorityClass>,
        ..BASE
    },
    // storage.k8s.io/v1
    Resource {
        group: "storage.k8s.io",
        kind: "StorageClass",
        plural: "storageclasses",
        singular: "storageclass",
        namespaced: false,
        short_names: &["sc"],
        columns: &[
            c("Provisioner", "The provisioner.", col::sc_provisioner),
            c("ReclaimPolicy", "The reclaim policy.", col::sc_reclaim),
            c(
                "VolumeBindingMode",
                "The volume binding mode.",
                col::sc_binding_mode,
            ),
            c(
                "AllowVolumeExpansion",
                "Whether volumes may grow.",
                col::sc_expansion,
            ),
        ],
        decode: decode_as::<storage::v1::StorageClass>,
        schema: schema_of::<storage::v1::StorageClass>,
        ..BASE
    },
];
