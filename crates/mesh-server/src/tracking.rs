//! Which rooms have presence: patterns, their TTL and their guard.

use crate::error::ServerError;
use regex::Regex;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// What a [`Guard`] is asked about: may this connection subscribe to or
/// publish in this room?
#[derive(Debug, Clone)]
pub struct GuardRequest {
    /// The connection asking.
    pub connection_id: String,
    /// The room.
    pub room_name: String,
    /// The connection's metadata (`Null` when it has none).
    pub metadata: serde_json::Value,
}

type GuardFn = dyn Fn(GuardRequest) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync;

/// Decides per connection whether it may subscribe to or publish in a
/// tracked room. Cheap to clone.
#[derive(Clone)]
pub struct Guard(Arc<GuardFn>);

impl Guard {
    /// A guard from an async predicate.
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn(GuardRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        Guard(Arc::new(move |req| Box::pin(f(req))))
    }

    /// A guard from a plain predicate.
    pub fn sync<F>(f: F) -> Self
    where
        F: Fn(&GuardRequest) -> bool + Send + Sync + 'static,
    {
        Guard(Arc::new(move |req| {
            let allowed = f(&req);
            Box::pin(async move { allowed })
        }))
    }

    /// Asks the guard.
    pub async fn allows(&self, req: GuardRequest) -> bool {
        (self.0)(req).await
    }
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Guard(..)")
    }
}

/// Options of a tracked-room pattern.
#[derive(Debug, Clone, Default)]
pub struct TrackOptions {
    /// Presence TTL: a member that sends no pong for this long is removed
    /// with a `leave`. `None` (the default): presence lasts until the
    /// connection leaves or closes.
    pub ttl: Option<Duration>,
    /// Who may subscribe and publish; everyone when `None`.
    pub guard: Option<Guard>,
}

#[derive(Debug, Clone)]
enum Pattern {
    Exact(String),
    Regex(Regex),
}

impl Pattern {
    /// A pattern with no regex metacharacters is an exact room name;
    /// anything else is a regular expression that must match the whole name.
    fn parse(pattern: &str) -> Result<Self, ServerError> {
        if regex::escape(pattern) == pattern {
            return Ok(Pattern::Exact(pattern.to_string()));
        }
        Regex::new(&format!("^(?:{pattern})$"))
            .map(Pattern::Regex)
            .map_err(|e| ServerError::Config(format!("invalid room pattern {pattern:?}: {e}")))
    }

    fn matches(&self, room: &str) -> bool {
        match self {
            Pattern::Exact(name) => name == room,
            Pattern::Regex(re) => re.is_match(room),
        }
    }
}

/// The server's tracked-room patterns, first match wins.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tracker {
    rules: Vec<(Pattern, Arc<TrackOptions>)>,
}

impl Tracker {
    pub(crate) fn add(&mut self, pattern: &str, options: TrackOptions) -> Result<(), ServerError> {
        self.rules
            .push((Pattern::parse(pattern)?, Arc::new(options)));
        Ok(())
    }

    /// The options of the first pattern matching `room`, if it is tracked.
    pub(crate) fn lookup(&self, room: &str) -> Option<Arc<TrackOptions>> {
        self.rules
            .iter()
            .find(|(pattern, _)| pattern.matches(room))
            .map(|(_, options)| options.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_regex_patterns() {
        let mut t = Tracker::default();
        t.add("lobby", TrackOptions::default()).unwrap();
        t.add(
            "doc:[0-9]+",
            TrackOptions {
                ttl: Some(Duration::from_secs(1)),
                guard: None,
            },
        )
        .unwrap();
        assert!(t.lookup("lobby").is_some());
        assert!(t.lookup("lobby2").is_none());
        assert_eq!(
            t.lookup("doc:12").unwrap().ttl,
            Some(Duration::from_secs(1))
        );
        // Regexes are anchored: a prefix or suffix does not match.
        assert!(t.lookup("xdoc:12").is_none());
        assert!(t.lookup("doc:12x").is_none());
        assert!(t.add("(", TrackOptions::default()).is_err());
    }
}
