//! The names and numeric codes of oc-lib's enums (`PubSubAction`, `NATSMethod`, `DataType`,
//! `PeerRelation`) and the NATS subjects (DESIGN §9).
//!
//! The seed does not carry oc-lib's numbers (spec D §3.8), so they are a table: the defaults below
//! follow oc-lib's declaration order as far as it is known, and every code can be overridden in
//! the daemon's `[nats.codes.*]` sections to match the oc-lib the apps were built with. Messages
//! may also use the names themselves (`"PB_CREATE"`, `"PEER"`), which need no table.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// oc-lib `PubSubAction` names, in declaration order (default code = position).
pub const ACTIONS: [&str; 11] = [
    "PB_SEARCH",
    "PB_SEARCH_RESPONSE",
    "PB_CREATE",
    "PB_UPDATE",
    "PB_DELETE",
    "PB_PLANNER",
    "PB_CLOSE_PLANNER",
    "PB_CONSIDERS",
    "PB_ADMIRALTY_CONFIG",
    "PB_MINIO_CONFIG",
    "PB_CLOSE_SEARCH",
];

/// oc-lib `NATSMethod` names, in declaration order (default code = position). The subject of a
/// method is its name in lower case unless `[nats.subjects]` says otherwise.
pub const METHODS: [&str; 14] = [
    "REMOVE_EXECUTION",
    "CREATE_EXECUTION",
    "PLANNER_EXECUTION",
    "DISCOVERY",
    "WORKFLOW_EVENT",
    "ARGO_KUBE_EVENT",
    "CREATE_RESOURCE",
    "REMOVE_RESOURCE",
    "PROPALGATION_EVENT",
    "SEARCH_EVENT",
    "CONSIDERS_EVENT",
    "ADMIRALTY_CONFIG_EVENT",
    "MINIO_CONFIG_EVENT",
    "VERIFY_RESOURCE",
];

/// oc-lib `DataType` names, in declaration order (default code = position; `INVALID` is 0).
pub const DATATYPES: [&str; 17] = [
    "INVALID",
    "DATA_RESOURCE",
    "PROCESSING_RESOURCE",
    "STORAGE_RESOURCE",
    "COMPUTE_RESOURCE",
    "WORKFLOW_RESOURCE",
    "WORKFLOW",
    "WORKFLOW_EXECUTION",
    "WORKSPACE",
    "PEER",
    "COLLABORATIVE_AREA",
    "RULE",
    "BOOKING",
    "WORKFLOW_HISTORY",
    "WORKSPACE_HISTORY",
    "ORDER",
    "PURCHASE_RESOURCE",
];

/// oc-lib `PeerRelation` names, in declaration order (default code = position).
pub const RELATIONS: [&str; 5] = ["NONE", "SELF", "PARTNER", "BLACKLIST", "PENDING_PARTNER"];

/// Overrides of the default codes, by name (`[nats.codes.actions]`, `…methods`, `…datatypes`,
/// `…relations` in the daemon's configuration). A name not listed keeps its default; a name
/// that is not one of ours is added (it can then be matched by number, and is reported by name).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CodeOverrides {
    /// `PubSubAction` codes.
    pub actions: BTreeMap<String, i64>,
    /// `NATSMethod` codes.
    pub methods: BTreeMap<String, i64>,
    /// `DataType` codes.
    pub datatypes: BTreeMap<String, i64>,
    /// `PeerRelation` codes.
    pub relations: BTreeMap<String, i64>,
}

/// One enum: names to codes and back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    by_name: BTreeMap<String, i64>,
    by_code: BTreeMap<i64, String>,
}

impl Table {
    fn new(defaults: &[&str], overrides: &BTreeMap<String, i64>) -> Table {
        let mut by_name: BTreeMap<String, i64> =
            defaults.iter().enumerate().map(|(i, n)| (n.to_string(), i as i64)).collect();
        for (name, code) in overrides {
            by_name.insert(name.trim().to_ascii_uppercase(), *code);
        }
        let mut by_code = BTreeMap::new();
        for (name, code) in &by_name {
            // An override that reuses a default's code hides the default name for that number.
            let overridden = overrides.keys().any(|k| k.trim().eq_ignore_ascii_case(name));
            if overridden || !by_code.contains_key(code) {
                by_code.insert(*code, name.clone());
            }
        }
        Table { by_name, by_code }
    }

    /// The code of `name` (case-insensitive).
    pub fn code(&self, name: &str) -> Option<i64> {
        self.by_name.get(&name.trim().to_ascii_uppercase()).copied()
    }

    /// The name of `code`.
    pub fn name(&self, code: i64) -> Option<&str> {
        self.by_code.get(&code).map(String::as_str)
    }

    /// The code of `name`, which must be one of the defaults (a programming error otherwise:
    /// reported as -1, which matches nothing).
    pub(crate) fn known(&self, name: &str) -> i64 {
        self.code(name).unwrap_or(-1)
    }
}

/// Every table, resolved from the defaults and the overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Codes {
    /// `PubSubAction`.
    pub actions: Table,
    /// `NATSMethod`.
    pub methods: Table,
    /// `DataType`.
    pub datatypes: Table,
    /// `PeerRelation`.
    pub relations: Table,
}

impl Codes {
    /// The defaults with `overrides` applied.
    pub fn new(overrides: &CodeOverrides) -> Codes {
        Codes {
            actions: Table::new(&ACTIONS, &overrides.actions),
            methods: Table::new(&METHODS, &overrides.methods),
            datatypes: Table::new(&DATATYPES, &overrides.datatypes),
            relations: Table::new(&RELATIONS, &overrides.relations),
        }
    }
}

impl Default for Codes {
    fn default() -> Self {
        Codes::new(&CodeOverrides::default())
    }
}

/// The subject of a method: an override from `subjects` (keys matched case-insensitively), else
/// the method's name in lower case.
pub fn subject(subjects: &BTreeMap<String, String>, method: &str) -> String {
    subjects
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(method))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| method.to_ascii_lowercase())
}
