//! How [`Presence`](super::Presence) tells which connections are one person.

use super::engine::{key_from_field, KeySource, StateKey};
use futures_util::future::BoxFuture;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

/// Reads a group key from a connection's metadata.
pub type MetadataKeyFn = Arc<dyn Fn(&Value) -> Option<String> + Send + Sync>;

/// What a [`ResolveFn`] returns: a key (or `None`) per connection id asked
/// about; ids missing from the map count as `None`. An `Err` fails the whole batch.
pub type ResolveFuture = BoxFuture<'static, Result<HashMap<String, Option<String>>, String>>;

/// Resolves the keys of a batch of connection ids.
pub type ResolveFn = Arc<dyn Fn(Vec<String>) -> ResolveFuture + Send + Sync>;

/// Where a connection's group key (its user id) comes from.
#[derive(Clone)]
pub enum GroupKey {
    /// From the connection's metadata, fetched through the client (cached
    /// there, looked up concurrently for many joiners; the members listed
    /// by the subscribe reply come with their metadata and need no lookup).
    Metadata(MetadataKeyFn),
    /// From your own async resolver, called with batches of connection ids.
    Resolver(ResolveFn),
    /// From each connection's presence state. A connection is not shown
    /// until it has published a state with a key.
    State(StateKey),
}

impl GroupKey {
    /// Key from a metadata field, e.g. `"userId"` (a string or a number).
    pub fn metadata_field(name: &str) -> Self {
        let name = name.to_string();
        GroupKey::Metadata(Arc::new(move |metadata: &Value| {
            metadata
                .get(&name)
                .and_then(key_from_field)
                .map(|k| k.into_owned())
        }))
    }

    /// Key computed from the metadata by `f`.
    pub fn metadata_fn(f: impl Fn(&Value) -> Option<String> + Send + Sync + 'static) -> Self {
        GroupKey::Metadata(Arc::new(f))
    }

    /// Keys from an async resolver over batches of connection ids.
    pub fn resolver<F, Fut>(f: F) -> Self
    where
        F: Fn(Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<HashMap<String, Option<String>>, String>> + Send + 'static,
    {
        GroupKey::Resolver(Arc::new(move |ids| Box::pin(f(ids))))
    }

    /// Key from a state field, e.g. `"userId"` (the JavaScript
    /// `createPresence` `stateIdentifier: (s) => s?.userId`).
    pub fn state_field(name: &str) -> Self {
        GroupKey::State(StateKey::Field(Arc::from(name)))
    }

    /// Key computed from the state by `f`.
    pub fn state_fn(f: impl Fn(&Value) -> Option<String> + Send + Sync + 'static) -> Self {
        GroupKey::State(StateKey::Fn(Arc::new(f)))
    }

    /// The engine's view: keys from state, or resolved by us.
    pub(crate) fn key_source(&self) -> KeySource {
        match self {
            GroupKey::State(key) => KeySource::State(key.clone()),
            GroupKey::Metadata(_) | GroupKey::Resolver(_) => KeySource::Resolved,
        }
    }
}

impl fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupKey::Metadata(_) => f.write_str("GroupKey::Metadata(..)"),
            GroupKey::Resolver(_) => f.write_str("GroupKey::Resolver(..)"),
            GroupKey::State(_) => f.write_str("GroupKey::State(..)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metadata_field_reads_strings_and_numbers() {
        let GroupKey::Metadata(f) = GroupKey::metadata_field("userId") else {
            unreachable!()
        };
        assert_eq!(f(&json!({"userId": "u1"})), Some("u1".into()));
        assert_eq!(f(&json!({"userId": 42})), Some("42".into()));
        assert_eq!(f(&json!({"userId": null})), None);
        assert_eq!(f(&json!({"other": 1})), None);
        assert_eq!(f(&Value::Null), None);
    }

    #[test]
    fn key_sources() {
        assert!(matches!(
            GroupKey::state_field("userId").key_source(),
            KeySource::State(_)
        ));
        assert!(matches!(
            GroupKey::metadata_field("userId").key_source(),
            KeySource::Resolved
        ));
        let resolver = GroupKey::resolver(|_ids| async { Ok(HashMap::new()) });
        assert!(matches!(resolver.key_source(), KeySource::Resolved));
    }
}
