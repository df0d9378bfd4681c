//! Image references as Docker and containerd normalize them: `busybox` is
//! `docker.io/library/busybox:latest`, `user/app` is `docker.io/user/app:latest`, a
//! first component with a `.` or `:` (or `localhost`) is a registry, and `@sha256:...`
//! pins a digest.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `registry/path`, e.g. `docker.io/library/busybox`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid image reference {0:?}")]
pub struct InvalidReference(pub String);

impl Reference {
    pub fn parse(text: &str) -> Result<Reference, InvalidReference> {
        let invalid = || InvalidReference(text.to_string());
        if text.is_empty() || text.chars().any(char::is_whitespace) {
            return Err(invalid());
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => {
                let hex = digest.strip_prefix("sha256:").ok_or_else(invalid)?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid());
                }
                (rest, Some(digest.to_string()))
            }
            None => (text, None),
        };
        // A tag is after the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        if name.is_empty() || tag.as_deref() == Some("") {
            return Err(invalid());
        }
        let first = name.split('/').next().unwrap_or_default();
        let has_registry = name.contains('/')
            && (first.contains('.') || first.contains(':') || first == "localhost");
        // Docker Hub's own names: `index.docker.io` is `docker.io`, and its single-part
        // repositories live under `library/`.
        let (registry, path) = if has_registry {
            let (registry, path) = name.split_once('/').unwrap_or((name, ""));
            let registry = if registry == "index.docker.io" {
                "docker.io"
            } else {
                registry
            };
            (registry, path)
        } else {
            ("docker.io", name)
        };
        // Repository paths are lower case; a registry host may have capitals.
        let path_ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c);
        let host_ok = |c: char| c.is_ascii_alphanumeric() || ".-:".contains(c);
        if path.is_empty()
            || path.split('/').any(str::is_empty)
            || !path.chars().all(path_ok)
            || !registry.chars().all(host_ok)
        {
            return Err(invalid());
        }
        if tag.as_deref().is_some_and(|t| {
            t.len() > 128
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                || t.starts_with(['.', '-'])
        }) {
            return Err(invalid());
        }
        let repository = if registry == "docker.io" && !path.contains('/') {
            format!("docker.io/library/{path}")
        } else {
            format!("{registry}/{path}")
        };
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Ok(Reference {
            repository,
            tag,
            digest,
        })
    }

    /// `repository:tag`, when there is a tag.
    pub fn tagged(&self) -> Option<String> {
        self.tag
            .as_ref()
            .map(|t| format!("{}:{t}", self.repository))
    }

    /// `repository@digest`, when there is a digest.
    pub fn digested(&self) -> Option<String> {
        self.digest
            .as_ref()
            .map(|d| format!("{}@{d}", self.repository))
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse(s).expect("valid").to_string()
    }

    #[test]
    fn names_are_normalized_as_docker_does() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("user/app"), "docker.io/user/app:latest");
        assert_eq!(norm("localhost:5000/app:v1"), "localhost:5000/app:v1");
        assert_eq!(norm("127.0.0.1:5000/a/b"), "127.0.0.1:5000/a/b:latest");
        assert_eq!(
            norm("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            norm("index.docker.io/library/busybox:1"),
            "docker.io/library/busybox:1"
        );
        assert_eq!(
            norm("Registry.Example:5000/app"),
            "Registry.Example:5000/app:latest"
        );
        let pinned = format!("busybox@sha256:{}", "a".repeat(64));
        assert_eq!(
            norm(&pinned),
            format!("docker.io/library/busybox@sha256:{}", "a".repeat(64))
        );
        for bad in [
            "",
            "Busybox",
            "a b",
            "busybox:",
            "x@sha256:12",
            "a//b",
            "x:-bad",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?}");
        }
    }
}
