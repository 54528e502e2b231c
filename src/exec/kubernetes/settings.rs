//! `[executor.kubernetes]` of the host config: which cluster and namespace, and what every
//! handler's pod gets beside what the handler entry asks (service account, pull policy,
//! placement, extra labels).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::contract::units::parse_duration;

/// The prefix of our own labels and annotations; a config may not set keys under it.
pub const DOMAIN: &str = "codex-runner.io/";

/// When the image of a handler's pod is pulled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum PullPolicy {
    /// Every start.
    Always,
    /// When the node does not have it (the default).
    #[default]
    IfNotPresent,
    /// Never: the node must have it.
    Never,
}

impl PullPolicy {
    /// The name Kubernetes uses.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// A taint the handlers' pods tolerate (`kubectl explain pod.spec.tolerations`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Toleration {
    /// The taint's key (empty with `operator = "Exists"`: every taint).
    pub key: Option<String>,
    /// `Equal` (the default) or `Exists`.
    pub operator: Option<String>,
    /// The taint's value, for `Equal`.
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`; empty: all.
    pub effect: Option<String>,
}

/// The Kubernetes executor's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesConfig {
    /// The kubeconfig file; without it `$KUBECONFIG`, `~/.kube/config`, or the service
    /// account of the pod the runner itself runs in.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    pub context: Option<String>,
    /// Where the Jobs go (default: the context's namespace, else `default`).
    pub namespace: Option<String>,
    /// The service account the handlers' pods run as (its token is never mounted).
    pub service_account: Option<String>,
    /// When the handler's image is pulled.
    pub image_pull_policy: PullPolicy,
    /// Nodes the pods may go to.
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    pub tolerations: Vec<Toleration>,
    /// Labels every Job and pod carries beside ours.
    pub labels: BTreeMap<String, String>,
    /// How long a Job may wait for its pod to start (scheduling, pulling) before the request
    /// fails with the reason.
    pub start_timeout: Duration,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            kubeconfig: None,
            context: None,
            namespace: None,
            service_account: None,
            image_pull_policy: PullPolicy::default(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            labels: BTreeMap::new(),
            start_timeout: Duration::from_secs(300),
        }
    }
}

/// `[executor.kubernetes]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesFile {
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    namespace: Option<String>,
    service_account: Option<String>,
    image_pull_policy: Option<PullPolicy>,
    #[serde(default)]
    node_selector: BTreeMap<String, String>,
    #[serde(default)]
    tolerations: Vec<Toleration>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    start_timeout: Option<String>,
}

impl KubernetesFile {
    /// Check the names and values against what Kubernetes accepts.
    pub fn check(self) -> anyhow::Result<KubernetesConfig> {
        if let Some(ns) = &self.namespace {
            if !is_dns_label(ns) {
                bail!("namespace `{ns}` is not a Kubernetes name: lowercase letters, digits and `-`, at most 63, starting and ending with a letter or digit");
            }
        }
        if let Some(sa) = &self.service_account {
            if !is_dns_subdomain(sa) {
                bail!("service_account `{sa}` is not a Kubernetes name");
            }
        }
        for (what, map) in [
            ("labels", &self.labels),
            ("node_selector", &self.node_selector),
        ] {
            for (k, v) in map {
                if !is_label_key(k) {
                    bail!("{what}: `{k}` is not a label key (an optional `prefix/` then a name of at most 63 letters, digits, `-`, `_` or `.`)");
                }
                if !is_label_value(v) {
                    bail!("{what}.{k}: `{v}` is not a label value (at most 63 letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit)");
                }
            }
        }
        if let Some(k) = self.labels.keys().find(|k| k.starts_with(DOMAIN)) {
            bail!("labels: `{k}` is the runner's own ({DOMAIN}…) and cannot be set here");
        }
        for (i, t) in self.tolerations.iter().enumerate() {
            if let Some(op) = &t.operator {
                if op != "Equal" && op != "Exists" {
                    bail!("tolerations[{i}].operator is `{op}`: use `Equal` or `Exists`");
                }
            }
            if let Some(e) = &t.effect {
                if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&e.as_str()) {
                    bail!("tolerations[{i}].effect is `{e}`: use `NoSchedule`, `PreferNoSchedule` or `NoExecute`");
                }
            }
        }
        let d = KubernetesConfig::default();
        Ok(KubernetesConfig {
            kubeconfig: self.kubeconfig,
            context: self.context,
            namespace: self.namespace,
            service_account: self.service_account,
            image_pull_policy: self.image_pull_policy.unwrap_or(d.image_pull_policy),
            node_selector: self.node_selector,
            tolerations: self.tolerations,
            labels: self.labels,
            start_timeout: self
                .start_timeout
                .map_or(Ok(d.start_timeout), |s| {
                    parse_duration(&s).map_err(anyhow::Error::msg)
                })
                .context("start_timeout")?,
        })
    }
}

/// A DNS label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS subdomain: dot-separated DNS labels, at most 253.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A label value: empty, or at most 63 of `[A-Za-z0-9._-]` starting and ending alphanumeric.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a non-empty label value.
pub fn is_label_key(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<KubernetesConfig> {
        let f: KubernetesFile = toml::from_str(text)?;
        f.check()
    }

    #[test]
    fn names_and_labels_are_checked_in_kubernetes_terms() {
        let c = parse("namespace = \"ops\"\nimage_pull_policy = \"Never\"\nstart_timeout = \"90s\"\nlabels = { team = \"infra\" }\nnode_selector = { \"kubernetes.io/os\" = \"linux\" }\ntolerations = [{ key = \"dedicated\", operator = \"Equal\", value = \"ops\", effect = \"NoSchedule\" }]\n").unwrap();
        assert_eq!(c.namespace.as_deref(), Some("ops"));
        assert_eq!(c.image_pull_policy, PullPolicy::Never);
        assert_eq!(c.start_timeout, Duration::from_secs(90));
        assert_eq!(c.tolerations[0].effect.as_deref(), Some("NoSchedule"));
        for (bad, says) in [
            ("namespace = \"Ops\"", "namespace `Ops`"),
            (
                "labels = { \"codex-runner.io/runner\" = \"x\" }",
                "runner's own",
            ),
            ("labels = { team = \"-x\" }", "labels.team"),
            (
                "node_selector = { \"a b\" = \"x\" }",
                "node_selector: `a b`",
            ),
            (
                "tolerations = [{ operator = \"In\" }]",
                "tolerations[0].operator",
            ),
            ("start_timeout = \"soon\"", "start_timeout"),
        ] {
            let err = format!("{:#}", parse(bad).unwrap_err());
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert!(parse("namespaces = \"ops\"").is_err());
    }

    #[test]
    fn the_documented_deployment_carries_a_config_that_parses() {
        let manifest = include_str!("../../../docs/kubernetes/deployment.yaml");
        let config: String = manifest
            .lines()
            .skip_while(|l| !l.ends_with("config.toml: |"))
            .skip(1)
            .take_while(|l| l.is_empty() || l.starts_with("    "))
            .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
            .collect();
        let host = crate::config::HostConfig::parse(&config).unwrap();
        let crate::config::ExecutorConfig::Kubernetes(k) = host.executor else {
            panic!("{config}")
        };
        assert_eq!(k.kubeconfig, None, "in the pod: its service account");
        assert_eq!(host.name.as_deref(), Some("cluster-runner-1"));
    }

    #[test]
    fn the_documented_configuration_parses_as_documented() {
        let doc = include_str!("../../../docs/kubernetes/README.md");
        let toml: String = doc
            .lines()
            .skip_while(|l| *l != "```toml")
            .skip(1)
            .take_while(|l| *l != "```")
            .map(|l| format!("{l}\n"))
            .collect();
        let host = crate::config::HostConfig::parse(&toml).unwrap();
        let crate::config::ExecutorConfig::Kubernetes(k) = host.executor else {
            panic!("{toml}")
        };
        assert_eq!(k.namespace.as_deref(), Some("codex-runner"));
        assert_eq!(k.start_timeout, Duration::from_secs(300));
        assert_eq!(k.node_selector["kubernetes.io/os"], "linux");
        assert_eq!(k.tolerations[0].key.as_deref(), Some("dedicated"));
        assert_eq!(k.labels["team"], "infra");
    }

    #[test]
    fn label_syntax() {
        assert!(is_label_value("host-1.example_a"));
        assert!(!is_label_value("a/b"));
        assert!(!is_label_value(&"a".repeat(64)));
        assert!(is_label_key("app.kubernetes.io/name"));
        assert!(!is_label_key("/name"));
        assert!(is_dns_label("codex-ops"));
        assert!(!is_dns_label("codex_ops"));
    }
}
