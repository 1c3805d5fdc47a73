//! Metadata write strategies.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How a metadata write combines with the value already stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Strategy {
    /// Store the value as given.
    #[default]
    Replace,
    /// Shallow object merge onto the existing value.
    Merge,
    /// Recursive object merge; arrays and scalars are replaced.
    DeepMerge,
}

impl Strategy {
    /// Combines `new` with the stored value `old` (`None` when nothing is
    /// stored). When either side is not an object, `new` replaces `old`.
    pub fn apply(self, old: Option<Value>, new: Value) -> Value {
        match (self, old) {
            (Strategy::Replace, _) | (_, None) => new,
            (Strategy::Merge, Some(Value::Object(mut base))) => match new {
                Value::Object(add) => {
                    base.extend(add);
                    Value::Object(base)
                }
                other => other,
            },
            (Strategy::DeepMerge, Some(old @ Value::Object(_))) => deep_merge(old, new),
            (_, Some(_)) => new,
        }
    }
}

fn deep_merge(old: Value, new: Value) -> Value {
    match (old, new) {
        (Value::Object(mut base), Value::Object(add)) => {
            for (key, value) in add {
                let merged = match base.remove(&key) {
                    Some(existing) => deep_merge(existing, value),
                    None => value,
                };
                base.insert(key, merged);
            }
            Value::Object(base)
        }
        (_, new) => new,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replace_stores_as_given() {
        let out = Strategy::Replace.apply(Some(json!({"a": 1})), json!({"b": 2}));
        assert_eq!(out, json!({"b": 2}));
    }

    #[test]
    fn merge_is_shallow() {
        let out = Strategy::Merge.apply(
            Some(json!({"a": 1, "n": {"x": 1, "y": 2}})),
            json!({"b": 2, "n": {"x": 9}}),
        );
        assert_eq!(out, json!({"a": 1, "b": 2, "n": {"x": 9}}));
    }

    #[test]
    fn deep_merge_recurses_into_objects_only() {
        let out = Strategy::DeepMerge.apply(
            Some(json!({"a": 1, "n": {"x": 1, "y": 2}, "list": [1, 2]})),
            json!({"n": {"x": 9}, "list": [3]}),
        );
        assert_eq!(out, json!({"a": 1, "n": {"x": 9, "y": 2}, "list": [3]}));
    }

    #[test]
    fn non_objects_are_replaced() {
        assert_eq!(
            Strategy::Merge.apply(Some(json!(5)), json!({"a": 1})),
            json!({"a": 1})
        );
        assert_eq!(
            Strategy::DeepMerge.apply(Some(json!({"a": 1})), json!("s")),
            json!("s")
        );
        assert_eq!(
            Strategy::Merge.apply(None, json!({"a": 1})),
            json!({"a": 1})
        );
    }

    #[test]
    fn wire_names() {
        assert_eq!(
            serde_json::to_value(Strategy::DeepMerge).unwrap(),
            json!("deepMerge")
        );
        assert_eq!(
            serde_json::from_value::<Strategy>(json!("merge")).unwrap(),
            Strategy::Merge
        );
    }
}
