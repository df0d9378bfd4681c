//! The access reviews of `authorization.k8s.io/v1`: SubjectAccessReview (may this user
//! do this?), LocalSubjectAccessReview (the same, inside one namespace),
//! SelfSubjectAccessReview (may I? `kubectl auth can-i`) and SelfSubjectRulesReview
//! (what may I do here? `kubectl auth can-i --list`). None is stored: each answers the
//! question in its `status` and is returned with 201 Created, as upstream.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, State as AxumState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};

use super::{Attributes, ResourceAttributes};
use crate::authn::UserInfo;
use crate::handler::State;
use crate::status::{ApiError, FieldError};

fn text(v: &Value, field: &str) -> String {
    v.get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The attributes a review's spec asks about; `namespace` overrides (a local review).
fn attributes(kind: &str, spec: &Value) -> Result<Attributes, ApiError> {
    let resource = spec.get("resourceAttributes").filter(|v| v.is_object());
    let non_resource = spec.get("nonResourceAttributes").filter(|v| v.is_object());
    match (resource, non_resource) {
        (Some(r), None) => Ok(Attributes {
            verb: text(r, "verb"),
            path: String::new(),
            resource: Some(ResourceAttributes {
                group: text(r, "group"),
                version: text(r, "version"),
                resource: text(r, "resource"),
                subresource: text(r, "subresource"),
                namespace: text(r, "namespace"),
                name: text(r, "name"),
            }),
        }),
        (None, Some(n)) => Ok(Attributes {
            verb: text(n, "verb"),
            path: text(n, "path"),
            resource: None,
        }),
        (Some(_), Some(_)) => Err(invalid(
            kind,
            "spec.nonResourceAttributes",
            "Invalid value: \"\": cannot be specified in combination with resourceAttributes",
        )),
        (None, None) => Err(invalid(
            kind,
            "spec.resourceAttributes",
            "Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
    }
}

fn invalid(kind: &str, field: &str, message: &str) -> ApiError {
    ApiError::invalid(
        kind,
        "authorization.k8s.io",
        "",
        vec![FieldError {
            field: field.into(),
            reason: "FieldValueInvalid",
            message: message.into(),
        }],
    )
}

/// The review as sent, with its kind, apiVersion, creation time and `status`.
fn answer(mut review: Value, kind: &str, status: Value) -> Response {
    review["kind"] = json!(kind);
    review["apiVersion"] = json!("authorization.k8s.io/v1");
    let now = json!(crate::registry::object::now());
    match review.get_mut("metadata").and_then(Value::as_object_mut) {
        Some(meta) => {
            meta.insert("creationTimestamp".into(), now);
        }
        None => review["metadata"] = json!({"creationTimestamp": now}),
    }
    review["status"] = status;
    (StatusCode::CREATED, Json(review)).into_response()
}

fn decide(state: &State, user: &UserInfo, attrs: &Attributes) -> Value {
    match state.authorizer.authorize(user, attrs) {
        Ok(()) => json!({"allowed": true}),
        Err(super::Denied(reason)) if reason.is_empty() => json!({"allowed": false}),
        Err(super::Denied(reason)) => json!({"allowed": false, "reason": reason}),
    }
}

async fn body(headers: &HeaderMap, body: Body) -> Result<Value, ApiError> {
    let review = crate::handler::json_body(headers, body).await?;
    if !review.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request must be a JSON object",
        ));
    }
    Ok(review)
}

fn caller(user: Option<Extension<UserInfo>>) -> UserInfo {
    user.map(|u| u.0).unwrap_or_else(UserInfo::anonymous)
}

/// A handler's answer, or its error as a Status.
fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`.
pub(crate) async fn self_subject_access_review(
    AxumState(state): AxumState<State>,
    user: Option<Extension<UserInfo>>,
    headers: HeaderMap,
    raw: Body,
) -> Response {
    const KIND: &str = "SelfSubjectAccessReview";
    respond(
        async {
            let review = body(&headers, raw).await?;
            let attrs = attributes(KIND, &review["spec"])?;
            let status = decide(&state, &caller(user), &attrs);
            Ok(answer(review, KIND, status))
        }
        .await,
    )
}

/// The user a SubjectAccessReview asks about (a user or a group is required).
fn subject(kind: &str, spec: &Value) -> Result<UserInfo, ApiError> {
    let list = |field: &str| -> Vec<String> {
        spec.get(field)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let extra: BTreeMap<String, Vec<String>> = spec
        .get("extra")
        .and_then(|e| serde_json::from_value(e.clone()).ok())
        .unwrap_or_default();
    let user = UserInfo {
        username: text(spec, "user"),
        uid: text(spec, "uid"),
        groups: list("groups"),
        extra,
    };
    if user.username.is_empty() && user.groups.is_empty() {
        return Err(invalid(
            kind,
            "spec.user",
            "Invalid value: \"\": at least one of user or group must be specified",
        ));
    }
    Ok(user)
}

/// `POST /apis/authorization.k8s.io/v1/subjectaccessreviews`.
pub(crate) async fn subject_access_review(
    AxumState(state): AxumState<State>,
    headers: HeaderMap,
    raw: Body,
) -> Response {
    const KIND: &str = "SubjectAccessReview";
    respond(
        async {
            let review = body(&headers, raw).await?;
            let who = subject(KIND, &review["spec"])?;
            let attrs = attributes(KIND, &review["spec"])?;
            let status = decide(&state, &who, &attrs);
            Ok(answer(review, KIND, status))
        }
        .await,
    )
}

/// `POST /apis/authorization.k8s.io/v1/namespaces/NS/localsubjectaccessreviews`.
pub(crate) async fn local_subject_access_review(
    AxumState(state): AxumState<State>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
    raw: Body,
) -> Response {
    const KIND: &str = "LocalSubjectAccessReview";
    respond(async {
        let mut review = body(&headers, raw).await?;
        if review
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .is_some_and(|ns| !ns.is_empty() && ns != namespace)
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let who = subject(KIND, &review["spec"])?;
        let mut attrs = attributes(KIND, &review["spec"])?;
        match attrs.resource.as_mut() {
            Some(r) if r.namespace.is_empty() || r.namespace == namespace => {
                r.namespace = namespace.clone()
            }
            Some(r) => {
                let message = format!(
                    "Invalid value: {:?}: must match metadata.namespace",
                    r.namespace
                );
                return Err(invalid(KIND, "spec.resourceAttributes.namespace", &message));
            }
            None => {
                return Err(invalid(
                    KIND,
                    "spec.nonResourceAttributes",
                    "Invalid value: \"\": disallowed on this kind of request",
                ));
            }
        }
        let status = decide(&state, &who, &attrs);
        review["metadata"]["namespace"] = json!(namespace);
        Ok(answer(review, KIND, status))
    }
    .await)
}

/// `POST /apis/authorization.k8s.io/v1/selfsubjectrulesreviews`.
pub(crate) async fn self_subject_rules_review(
    AxumState(state): AxumState<State>,
    user: Option<Extension<UserInfo>>,
    headers: HeaderMap,
    raw: Body,
) -> Response {
    const KIND: &str = "SelfSubjectRulesReview";
    respond(
        async {
            let review = body(&headers, raw).await?;
            let namespace = review
                .pointer("/spec/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let (rules, errors) = state.authorizer.rules_for(&caller(user), namespace);
            Ok(answer(review.clone(), KIND, rules_status(rules, &errors)))
        }
        .await,
    )
}

/// A SelfSubjectRulesReview's status: the rules split into resource and non-resource
/// ones, incomplete when some could not be gathered.
fn rules_status(rules: Vec<k8s_openapi::api::rbac::v1::PolicyRule>, errors: &[String]) -> Value {
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for rule in rules {
        let urls = rule.non_resource_urls.clone().unwrap_or_default();
        if !urls.is_empty() {
            non_resource_rules.push(json!({"verbs": rule.verbs, "nonResourceURLs": urls}));
        }
        let resources = rule.resources.clone().unwrap_or_default();
        if !resources.is_empty() {
            let mut entry = json!({
                "verbs": rule.verbs,
                "apiGroups": rule.api_groups.clone().unwrap_or_default(),
                "resources": resources,
            });
            if let Some(names) = rule.resource_names.filter(|n| !n.is_empty()) {
                entry["resourceNames"] = json!(names);
            }
            resource_rules.push(entry);
        }
    }
    let mut status = json!({
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": !errors.is_empty(),
    });
    if !errors.is_empty() {
        status["evaluationError"] = json!(errors.join(", "));
    }
    status
}
