//! The user list as one window's page sees it: a count and a window of rows.
//!
//! A 5,000-person room shown a dozen rows at a time must not cost the page
//! 5,000 rows: WebKit's web process held about 90 KB per person when the page
//! kept the whole list. So the backend keeps the sorted list ([`SortedList`])
//! and the page keeps only the rows it draws plus a margin, which it asks for
//! by position (the `users_window` command). Each frame, [`ListView`] tells
//! the page the list's new length, and the rows of its window again when any
//! of them changed; a change out of its sight costs the page nothing.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::error::AppError;
use crate::user_list::{ListDiff, UserRow};

/// The rows a page is sent before it asks for any: more than a first screen.
pub const FIRST_WINDOW: usize = 64;

/// The most rows a page may ask for at once; a tall window on a large
/// screen with its margins needs a few hundred at most.
pub const MAX_WINDOW: usize = 500;

/// Versions of every list in this process, so that a list replaced by a
/// reconnect never looks older to the page than the one it replaces.
static VERSIONS: AtomicU64 = AtomicU64::new(0);

fn next_version() -> u64 {
    VERSIONS.fetch_add(1, Ordering::Relaxed) + 1
}

/// What a `presence://users` event brings (as a JSON string, see
/// [`crate::events::emit_users`]) and the reply to `users_window`: the
/// list's length and, when present, the rows of the page's window.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsersWindow {
    /// Grows with every change of the list (never goes back, even across
    /// reconnects): the page keeps the newest rows it was sent.
    pub version: u64,
    /// How many people the list has.
    pub count: usize,
    /// The position of the first of `rows` in the sorted list.
    pub start: usize,
    /// Rows `start..start + rows.len()`; `None` in an event that only
    /// brings a new count (the rows of the page's window did not change).
    pub rows: Option<Vec<Arc<UserRow>>>,
}

/// One row and where it sorts.
#[derive(Debug)]
struct Entry {
    key: Arc<str>,
    row: Arc<UserRow>,
}

/// Where a row sorts: you first, then by name ignoring case, then by id
/// (unique, so no two rows sort alike).
fn sort_key(row: &UserRow) -> Arc<str> {
    let name = if row.username.is_empty() {
        &row.id
    } else {
        &row.username
    };
    let you = if row.you { '0' } else { '1' };
    format!("{you}{}\0{}", name.to_lowercase(), row.id).into()
}

/// The whole list, sorted as shown, built from [`ListDiff`]s.
#[derive(Debug, Default)]
pub struct SortedList {
    rows: Vec<Entry>,
    /// Each row's sort key by id, to find it again.
    keys: HashMap<String, Arc<str>>,
}

impl SortedList {
    /// How many rows there are.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows at positions `range`, as far as the list reaches.
    pub fn rows(&self, range: Range<usize>) -> Vec<Arc<UserRow>> {
        let end = range.end.min(self.rows.len());
        let start = range.start.min(end);
        self.rows[start..end]
            .iter()
            .map(|e| e.row.clone())
            .collect()
    }

    /// The row of user `id`, if they are in the list.
    pub fn get(&self, id: &str) -> Option<&UserRow> {
        let key = self.keys.get(id)?;
        let i = self.rows.binary_search_by(|e| e.key.cmp(key)).ok()?;
        Some(&self.rows[i].row)
    }

    /// Marks the row of user `id` starred or not, in place (a star does not
    /// move a row). Returns whether the row changed.
    pub fn set_starred(&mut self, id: &str, starred: bool) -> bool {
        let Some(key) = self.keys.get(id) else {
            return false;
        };
        let Ok(i) = self.rows.binary_search_by(|e| e.key.cmp(key)) else {
            return false;
        };
        let entry = &mut self.rows[i];
        if entry.row.starred == starred || entry.row.you {
            return false;
        }
        let mut row = UserRow::clone(&entry.row);
        row.starred = starred;
        entry.row = Arc::new(row);
        true
    }

    /// Applies a diff. A changed row that keeps its place is replaced where
    /// it is; rows that come, go or move are merged in with one pass over
    /// the list and a sort that finds it already nearly in order.
    pub fn apply(&mut self, diff: ListDiff) {
        if diff.full {
            self.rows.clear();
            self.keys.clear();
        }
        let mut gone = Vec::new();
        for id in &diff.remove {
            gone.extend(self.keys.remove(id.as_str()));
        }
        let mut added = Vec::new();
        for row in diff.upsert {
            let key = sort_key(&row);
            let row = Arc::new(row);
            match self.keys.get(row.id.as_str()) {
                Some(old) if *old == key => {
                    if let Ok(i) = self.rows.binary_search_by(|e| e.key.cmp(&key)) {
                        self.rows[i].row = row;
                    }
                }
                old => {
                    gone.extend(old.cloned());
                    self.keys.insert(row.id.clone(), key.clone());
                    added.push(Entry { key, row });
                }
            }
        }
        if !gone.is_empty() {
            gone.sort_unstable();
            self.rows.retain(|e| gone.binary_search(&e.key).is_err());
        }
        if !added.is_empty() {
            self.rows.append(&mut added);
            // Stable sort: a sorted run and a short unsorted tail merge in
            // about one pass.
            self.rows.sort_by(|a, b| a.key.cmp(&b.key));
        }
    }
}

/// One page's view of the list: the list itself, the window of positions
/// the page asked for, and what it was last sent, so that a frame in which
/// nothing it shows changed sends nothing.
#[derive(Debug)]
pub struct ListView {
    list: SortedList,
    version: u64,
    window: Range<usize>,
    /// The count and window rows the page was last sent.
    sent: Option<(usize, Vec<Arc<UserRow>>)>,
}

impl Default for ListView {
    fn default() -> Self {
        ListView::new()
    }
}

impl ListView {
    /// An empty list; the page's window is the first [`FIRST_WINDOW`] rows
    /// until it asks for another.
    pub fn new() -> Self {
        ListView {
            list: SortedList::default(),
            version: next_version(),
            window: 0..FIRST_WINDOW,
            sent: None,
        }
    }

    /// The whole list.
    pub fn list(&self) -> &SortedList {
        &self.list
    }

    /// Takes a change of the list.
    pub fn apply(&mut self, diff: ListDiff) {
        self.list.apply(diff);
        self.version = next_version();
    }

    /// Marks user `id`'s row starred or not (see [`SortedList::set_starred`]);
    /// returns what the page must be told, if anything.
    pub fn set_starred(&mut self, id: &str, starred: bool) -> Option<UsersWindow> {
        if !self.list.set_starred(id, starred) {
            return None;
        }
        self.version = next_version();
        self.event()
    }

    /// What the page must be told since it was last sent something: the
    /// count, when that changed, and its window's rows, when any of them
    /// changed (a row is shared with the list, so an unchanged one is the
    /// same pointer). `None` when the page is up to date.
    pub fn event(&mut self) -> Option<UsersWindow> {
        let count = self.list.len();
        let rows = self.list.rows(self.window.clone());
        let (count_changed, rows_changed) = match &self.sent {
            None => (true, true),
            Some((sent_count, sent_rows)) => (
                *sent_count != count,
                sent_rows.len() != rows.len()
                    || sent_rows.iter().zip(&rows).any(|(a, b)| !Arc::ptr_eq(a, b)),
            ),
        };
        if !count_changed && !rows_changed {
            return None;
        }
        let start = self.window.start.min(count);
        let changed = rows_changed.then(|| rows.clone());
        self.sent = Some((count, rows));
        Some(UsersWindow {
            version: self.version,
            count,
            start,
            rows: changed,
        })
    }

    /// The page asks for rows `start..end`: they become its window, which
    /// later events keep up to date.
    pub fn request(&mut self, start: usize, end: usize) -> Result<UsersWindow, AppError> {
        if end < start {
            return Err(AppError::invalid(format!(
                "the window {start}..{end} ends before it starts"
            )));
        }
        if end - start > MAX_WINDOW {
            return Err(AppError::invalid(format!(
                "the window {start}..{end} has {} rows; at most {MAX_WINDOW} at a time",
                end - start
            )));
        }
        self.window = start..end;
        let count = self.list.len();
        let rows = self.list.rows(start..end);
        self.sent = Some((count, rows.clone()));
        Ok(UsersWindow {
            version: self.version,
            count,
            start: start.min(count),
            rows: Some(rows),
        })
    }

    /// The page reloaded: it has nothing, and its window is the first rows.
    pub fn reset(&mut self) {
        self.window = 0..FIRST_WINDOW;
        self.sent = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, name: &str, status: &str) -> UserRow {
        UserRow {
            id: id.into(),
            username: name.into(),
            status: status.into(),
            expires_at: None,
            availability: String::new(),
            idle_since: None,
            tab_count: 1,
            you: id == "me",
            starred: false,
            unverified: false,
            timestamp: 0,
        }
    }

    fn diff(full: bool, upsert: Vec<UserRow>, remove: &[&str]) -> ListDiff {
        ListDiff {
            full,
            upsert,
            remove: remove.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn names(rows: &[Arc<UserRow>]) -> Vec<&str> {
        rows.iter().map(|r| r.username.as_str()).collect()
    }

    #[test]
    fn you_first_then_names_ignoring_case_then_ids() {
        let mut list = SortedList::default();
        list.apply(diff(
            true,
            vec![
                row("b", "bob", ""),
                row("a2", "Ada", ""),
                row("me", "Zed", ""),
                row("a1", "ada", ""),
                row("c", "", ""),
            ],
            &[],
        ));
        let ids: Vec<String> = list.rows(0..10).iter().map(|r| r.id.clone()).collect();
        // A row without a name sorts by its id.
        assert_eq!(ids, ["me", "a1", "a2", "b", "c"]);
    }

    #[test]
    fn changes_keep_the_list_sorted() {
        let mut list = SortedList::default();
        let people: Vec<UserRow> = (0..100)
            .map(|i| row(&format!("u{i}"), &format!("P{i:03}"), ""))
            .collect();
        list.apply(diff(true, people, &[]));
        // A status change stays in place; a rename moves; some leave, some come.
        list.apply(diff(
            false,
            vec![
                row("u5", "P005", "busy"),
                row("u7", "A007", ""),
                row("new", "P0505", ""),
            ],
            &["u0", "u99", "nobody"],
        ));
        assert_eq!(list.len(), 99);
        let all = list.rows(0..1000);
        assert_eq!(names(&all[..2]), ["A007", "P001"]);
        assert!(all.windows(2).all(|w| sort_key(&w[0]) < sort_key(&w[1])));
        assert_eq!(all.iter().find(|r| r.id == "u5").unwrap().status, "busy");
        assert!(all.iter().any(|r| r.id == "new"));
        assert!(!all.iter().any(|r| r.id == "u0" || r.id == "u99"));
        // A full diff replaces everything.
        list.apply(diff(true, vec![row("x", "X", "")], &[]));
        assert_eq!(names(&list.rows(0..10)), ["X"]);
    }

    #[test]
    fn windows_are_clamped_to_the_list() {
        let mut list = SortedList::default();
        list.apply(diff(true, vec![row("a", "A", ""), row("b", "B", "")], &[]));
        assert_eq!(names(&list.rows(1..50)), ["B"]);
        assert!(list.rows(5..9).is_empty());
    }

    fn room(n: usize) -> Vec<UserRow> {
        (0..n)
            .map(|i| row(&format!("u{i:04}"), &format!("User {i:04}"), ""))
            .collect()
    }

    #[test]
    fn the_page_gets_its_window_and_then_only_what_changed_in_it() {
        let mut view = ListView::new();
        assert_eq!(view.event().unwrap().count, 0, "an empty room is news too");
        assert_eq!(view.event(), None);
        view.apply(diff(true, room(1000), &[]));
        let first = view.event().unwrap();
        assert_eq!((first.count, first.start), (1000, 0));
        assert_eq!(first.rows.unwrap().len(), FIRST_WINDOW);

        let asked = view.request(500, 540).unwrap();
        assert_eq!(asked.count, 1000);
        assert_eq!(asked.start, 500);
        assert_eq!(names(&asked.rows.unwrap())[0], "User 0500");
        assert_eq!(view.event(), None, "the reply brought it up to date");

        // A change out of sight sends nothing.
        view.apply(diff(false, vec![row("u0010", "User 0010", "away")], &[]));
        assert_eq!(view.event(), None);
        // One in sight sends the window.
        view.apply(diff(false, vec![row("u0520", "User 0520", "away")], &[]));
        let e = view.event().unwrap();
        assert!(e.version > asked.version);
        let rows = e.rows.unwrap();
        assert_eq!((e.start, rows.len()), (500, 40));
        assert_eq!(rows[20].status, "away");
        // Someone joining after the window changes only the count.
        view.apply(diff(false, vec![row("zz", "Zoe", "")], &[]));
        let e = view.event().unwrap();
        assert_eq!((e.count, e.rows), (1001, None));
        // Someone leaving before it shifts every row in it.
        view.apply(diff(false, vec![], &["u0001"]));
        let e = view.event().unwrap();
        assert_eq!(e.count, 1000);
        assert_eq!(names(&e.rows.unwrap())[0], "User 0501");
    }

    #[test]
    fn bad_windows_are_refused_and_change_nothing() {
        let mut view = ListView::new();
        view.apply(diff(true, room(10), &[]));
        view.event();
        let err = view.request(5, 2).unwrap_err();
        assert_eq!(err.code, "EINVALID");
        let err = view.request(0, MAX_WINDOW + 1).unwrap_err();
        assert!(err.message.contains("at most"), "{}", err.message);
        assert_eq!(view.event(), None);
        // Past the end is not an error: the list may just have shrunk.
        let past = view.request(20, 30).unwrap();
        assert_eq!((past.count, past.start), (10, 10));
        assert_eq!(past.rows, Some(vec![]));
    }

    #[test]
    fn a_star_changes_the_row_in_place_and_the_page_sees_it_in_its_window() {
        let mut view = ListView::new();
        view.apply(diff(true, room(100), &[]));
        view.apply(diff(false, vec![row("me", "Me", "")], &[]));
        view.request(0, 10).unwrap();
        let before: Vec<String> = view
            .list()
            .rows(0..100)
            .iter()
            .map(|r| r.id.clone())
            .collect();

        let e = view.set_starred("u0003", true).expect("in the window");
        let rows = e.rows.unwrap();
        assert!(rows.iter().find(|r| r.id == "u0003").unwrap().starred);
        assert_eq!(rows.iter().filter(|r| r.starred).count(), 1);
        let after: Vec<String> = view
            .list()
            .rows(0..100)
            .iter()
            .map(|r| r.id.clone())
            .collect();
        assert_eq!(before, after, "no row moved");
        assert_eq!(view.set_starred("u0003", true), None, "already starred");

        // Out of the page's sight: the list changes, the page is told nothing.
        assert_eq!(view.set_starred("u0050", true), None);
        assert!(view.list().get("u0050").unwrap().starred);
        // Not here, or you: nothing.
        assert_eq!(view.set_starred("nobody", true), None);
        assert_eq!(view.set_starred("me", true), None);
        assert!(!view.list().get("me").unwrap().starred);
        assert!(view.set_starred("u0003", false).is_some());
    }

    #[test]
    fn versions_grow_across_lists_and_reset_resends() {
        let mut old = ListView::new();
        old.apply(diff(true, room(3), &[]));
        let before = old.event().unwrap().version;
        let mut new = ListView::new();
        let e = new.event().unwrap();
        assert!(e.version > before, "a new list is never older");
        new.apply(diff(true, room(3), &[]));
        new.request(1, 3).unwrap();
        new.reset();
        let again = new.event().unwrap();
        assert_eq!(again.start, 0);
        assert_eq!(again.rows.unwrap().len(), 3);
    }
}
