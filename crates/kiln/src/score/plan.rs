//! What applying a score would change, resource by resource, and what it did.

use std::fmt;

use serde::Serialize;

/// The kind of a resource a score manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    /// A named network.
    Network,
    /// A VM.
    Vm,
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Network => "network",
            Self::Vm => "vm",
        })
    }
}

/// What happens to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Created: it does not exist yet.
    Create,
    /// Changed in place (redefined, or started).
    Update,
    /// Removed and created again: the change cannot be made in place.
    Replace,
    /// Removed: the score owns it but no longer wants it, or is being destroyed.
    Delete,
    /// Left alone: it is already as wanted.
    Unchanged,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Replace => "replace",
            Self::Delete => "delete",
            Self::Unchanged => "unchanged",
        })
    }
}

/// One field that differs between what exists and what the score wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldDiff {
    /// The top-level spec field (`cpus`), or `state` when a stopped VM is to be started.
    pub field: String,
    /// What exists now, as text (`(none)` when unset).
    pub from: String,
    /// What the score wants, as text (`(none)` when unset).
    pub to: String,
}

/// The plan for one resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResourcePlan {
    /// What kind of resource it is.
    pub kind: ResourceKind,
    /// The resource's name.
    pub name: String,
    /// The host it is (or will be) on, for topologies with several.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// What happens to it.
    pub change: Change,
    /// The fields that differ, for an update or a replace.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub diffs: Vec<FieldDiff>,
}

impl ResourcePlan {
    /// The plan for resource `name` of `kind`: on no particular host, with no field diffs.
    pub fn new(kind: ResourceKind, name: impl Into<String>, change: Change) -> Self {
        Self {
            kind,
            name: name.into(),
            host: None,
            change,
            diffs: Vec::new(),
        }
    }

    /// Sets the host the resource is (or will be) on.
    #[must_use]
    pub fn on(mut self, host: Option<String>) -> Self {
        self.host = host;
        self
    }

    /// Sets the fields that differ.
    #[must_use]
    pub fn with_diffs(mut self, diffs: Vec<FieldDiff>) -> Self {
        self.diffs = diffs;
        self
    }
}

impl fmt::Display for ResourcePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.change, self.kind, self.name)?;
        if let Some(host) = &self.host {
            write!(f, " on {host}")?;
        }
        for diff in &self.diffs {
            write!(f, "\n    {}: {} -> {}", diff.field, diff.from, diff.to)?;
        }
        Ok(())
    }
}

/// What a score would change (from `plan`) or changed (from `execute` and `destroy`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The score's name.
    pub score: String,
    /// Each resource the score wants or owns, with what happens to it.
    pub resources: Vec<ResourcePlan>,
}

/// What an apply or destroy did: the same shape as a plan.
pub type Outcome = Plan;

impl Plan {
    /// An empty plan for score `score`.
    pub fn new(score: impl Into<String>) -> Self {
        Self {
            score: score.into(),
            resources: Vec::new(),
        }
    }

    /// Whether nothing would change.
    pub fn is_unchanged(&self) -> bool {
        self.resources.iter().all(|r| r.change == Change::Unchanged)
    }

    /// How many resources get each kind of change, in a fixed order.
    pub fn counts(&self) -> Vec<(Change, usize)> {
        [
            Change::Create,
            Change::Update,
            Change::Replace,
            Change::Delete,
            Change::Unchanged,
        ]
        .into_iter()
        .map(|c| (c, self.resources.iter().filter(|r| r.change == c).count()))
        .filter(|(_, n)| *n > 0)
        .collect()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_unchanged() {
            return write!(
                f,
                "{}: unchanged ({} resources)",
                self.score,
                self.resources.len()
            );
        }
        let counts: Vec<String> = self
            .counts()
            .iter()
            .map(|(c, n)| format!("{n} {c}"))
            .collect();
        write!(f, "{}: {}", self.score, counts.join(", "))?;
        for resource in &self.resources {
            if resource.change != Change::Unchanged {
                write!(f, "\n  {resource}")?;
            }
        }
        Ok(())
    }
}

/// The top-level fields in which what exists (`have`; `None` when its spec is unknown)
/// differs from what is wanted.
pub(crate) fn spec_diffs<S: Serialize>(have: Option<&S>, want: &S) -> Vec<FieldDiff> {
    let value = |s: &S| serde_json::to_value(s).unwrap_or_default();
    json_diffs(&have.map(value).unwrap_or_default(), &value(want))
}

/// The top-level fields of two JSON objects that differ, as text.
pub(crate) fn json_diffs(from: &serde_json::Value, to: &serde_json::Value) -> Vec<FieldDiff> {
    let empty = serde_json::Map::new();
    let from = from.as_object().unwrap_or(&empty);
    let to = to.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = from.keys().chain(to.keys()).collect();
    keys.sort();
    keys.dedup();
    let show = |v: Option<&serde_json::Value>| match v {
        None | Some(serde_json::Value::Null) => "(none)".to_owned(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    keys.into_iter()
        .filter(|k| from.get(*k) != to.get(*k))
        .map(|k| FieldDiff {
            field: k.clone(),
            from: show(from.get(k)),
            to: show(to.get(k)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_name_each_changed_field() {
        let a = serde_json::json!({"name": "web", "cpus": 1, "disks": []});
        let b = serde_json::json!({"name": "web", "cpus": 2, "image": "x"});
        let diffs = json_diffs(&a, &b);
        let fields: Vec<&str> = diffs.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["cpus", "disks", "image"]);
        assert_eq!(diffs[0].from, "1");
        assert_eq!(diffs[0].to, "2");
        assert_eq!(diffs[2].from, "(none)");
    }

    #[test]
    fn a_plan_of_unchanged_resources_says_so() {
        let mut plan = Plan::new("lab");
        plan.resources.push(ResourcePlan::new(
            ResourceKind::Vm,
            "web-1",
            Change::Unchanged,
        ));
        assert!(plan.is_unchanged());
        assert_eq!(plan.to_string(), "lab: unchanged (1 resources)");
        plan.resources
            .push(ResourcePlan::new(ResourceKind::Vm, "web-2", Change::Create));
        assert_eq!(
            plan.to_string(),
            "lab: 1 create, 1 unchanged\n  create vm web-2"
        );
    }
}
