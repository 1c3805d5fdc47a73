//! Opening a room from outside the window: `mesh-presence --server URL
//! --room NAME` on the command line, or a `mesh-presence://join?server=URL&room=NAME`
//! link (a colleague's invite, opened by the desktop).
//!
//! Both become an [`Invite`], checked like the settings panel's fields
//! before anything is saved: a bad value changes nothing and says why.

use url::Url;

use crate::error::AppError;
use crate::settings::{validate_room, validate_server_url, Settings};

/// The scheme of invite links, registered for the app by its packages.
pub const SCHEME: &str = "mesh-presence";

/// What the command line's help prints.
pub const USAGE: &str = "\
Usage: mesh-presence [--server ws://HOST:PORT] [--room NAME]
       mesh-presence 'mesh-presence://join?server=ws://HOST:PORT&room=NAME'

Opens the room NAME on the Mesh server at the URL (either may be left out:
the saved one is kept) and saves them as your settings. When the app is
already running, the running app opens it.";

/// A room to open, and the server it is on. `None` keeps the saved value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invite {
    /// A Mesh server URL, as typed (checked by [`Invite::apply`]).
    pub server: Option<String>,
    /// A room name, as typed.
    pub room: Option<String>,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// Open the app as saved.
    Default,
    /// Open a room.
    Open(Invite),
    /// Print [`USAGE`] and exit.
    Help,
}

/// Reads the arguments after the program's name. A lone invite link is
/// left to the deep-link plugin (it is how the desktop opens links), and
/// arguments we do not know are ignored with a warning: the automation that
/// drives the app in tests may add its own.
pub fn parse_args<I, S>(args: I) -> Result<Launch, AppError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut invite = Invite::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg.as_ref();
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_string())),
            _ => (arg, None),
        };
        let slot = match flag {
            "--server" => &mut invite.server,
            "--room" => &mut invite.room,
            "-h" | "--help" => return Ok(Launch::Help),
            _ if arg.starts_with(&format!("{SCHEME}:")) => continue,
            _ => {
                tracing::warn!(argument = arg, "unknown command-line argument ignored");
                continue;
            }
        };
        let value = match inline {
            Some(value) => value,
            None => args
                .next()
                .map(|v| v.as_ref().to_string())
                .ok_or_else(|| AppError::invalid(format!("{flag} needs a value")))?,
        };
        *slot = Some(value);
    }
    if invite == Invite::default() {
        Ok(Launch::Default)
    } else {
        Ok(Launch::Open(invite))
    }
}

/// Reads an invite link: `mesh-presence://join?server=URL&room=NAME`.
pub fn parse_link(link: &str) -> Result<Invite, AppError> {
    let bad =
        |why: &str| AppError::invalid(format!("The link is not a Mesh Presence invite: {why}"));
    let url = Url::parse(link).map_err(|e| bad(&e.to_string()))?;
    if url.scheme() != SCHEME || url.host_str() != Some("join") {
        return Err(bad(&format!("expected {SCHEME}://join?server=…&room=…")));
    }
    let mut invite = Invite::default();
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "server" => invite.server = Some(value.into_owned()),
            "room" => invite.room = Some(value.into_owned()),
            _ => {}
        }
    }
    if invite.room.is_none() {
        return Err(bad("it names no room"));
    }
    Ok(invite)
}

/// The invite link to `room` on `server_url`. It never carries a token:
/// a server URL with one is refused by the settings.
pub fn link(server_url: &str, room: &str) -> String {
    let mut url = Url::parse(&format!("{SCHEME}://join")).expect("a valid base link");
    url.query_pairs_mut()
        .append_pair("server", server_url)
        .append_pair("room", room);
    url.into()
}

impl Invite {
    /// The settings with this invite applied, checked as the settings panel
    /// checks them, and what the user must be told.
    ///
    /// `embedded_url` is the app's own server, if it runs: an invite to it
    /// means "the embedded server", which is what a restart must start
    /// again. A token is only ever sent to the server it was saved for: an
    /// invite to another server drops it, and says so.
    pub fn apply(
        &self,
        saved: &Settings,
        embedded_url: Option<&str>,
    ) -> Result<(Settings, Option<String>), AppError> {
        let mut settings = saved.clone();
        if let Some(server) = &self.server {
            let server = validate_server_url(server.trim())
                .map_err(|e| AppError::invalid(format!("{} Nothing was changed.", e.message)))?;
            settings.server_url = (Some(server.as_str()) != embedded_url).then_some(server);
        }
        if let Some(room) = &self.room {
            settings.room = validate_room(room)
                .map_err(|e| AppError::invalid(format!("{} Nothing was changed.", e.message)))?;
        }
        let mut notice = None;
        if settings.server_url != saved.server_url && settings.token.take().is_some() {
            notice = Some(
                "Your token was not sent to the new server, and was removed from Settings: \
                 set the one that server gave you, if it needs one."
                    .to_string(),
            );
        }
        Ok((settings.validate()?, notice))
    }
}

#[cfg(test)]
mod tests {
    use mesh_client::Token;

    use super::*;

    fn open(server: Option<&str>, room: Option<&str>) -> Launch {
        Launch::Open(Invite {
            server: server.map(Into::into),
            room: room.map(Into::into),
        })
    }

    #[test]
    fn flags_are_read_in_both_forms_and_the_rest_ignored() {
        assert_eq!(parse_args(Vec::<String>::new()).unwrap(), Launch::Default);
        assert_eq!(
            parse_args(["--server", "ws://h:1", "--room=team"]).unwrap(),
            open(Some("ws://h:1"), Some("team"))
        );
        assert_eq!(
            parse_args(["--automation", "--room", "a b"]).unwrap(),
            open(None, Some("a b"))
        );
        assert_eq!(
            parse_args(["mesh-presence://join?room=x"]).unwrap(),
            Launch::Default,
            "a link is the deep-link plugin's"
        );
        assert_eq!(parse_args(["--help"]).unwrap(), Launch::Help);
        let err = parse_args(["--room"]).unwrap_err();
        assert!(err.message.contains("--room needs a value"), "{err:?}");
    }

    #[test]
    fn links_round_trip_with_any_characters() {
        let made = link("wss://mesh.example.com/a?b=c&d", "design & review");
        assert!(
            made.starts_with("mesh-presence://join?server=wss"),
            "{made}"
        );
        let invite = parse_link(&made).unwrap();
        assert_eq!(
            invite.server.as_deref(),
            Some("wss://mesh.example.com/a?b=c&d")
        );
        assert_eq!(invite.room.as_deref(), Some("design & review"));
    }

    #[test]
    fn bad_links_are_refused_with_the_reason() {
        for (link, why) in [
            (
                "https://example.com/join?room=x",
                "expected mesh-presence://join",
            ),
            (
                "mesh-presence://leave?room=x",
                "expected mesh-presence://join",
            ),
            ("mesh-presence://join?server=ws://h", "names no room"),
            ("not a link", "not a Mesh Presence invite"),
        ] {
            let err = parse_link(link).unwrap_err();
            assert!(err.message.contains(why), "{link}: {}", err.message);
        }
    }

    #[test]
    fn an_invite_is_checked_like_the_settings_and_changes_nothing_when_bad() {
        let saved = Settings {
            server_url: Some("ws://old:1".into()),
            room: "general".into(),
            display_name: "Ada".into(),
            token: Some(Token::new("a.b.c")),
            ..Settings::default()
        };
        let bad = Invite {
            server: Some("http://h".into()),
            room: Some("team".into()),
        };
        let err = bad.apply(&saved, None).unwrap_err();
        assert!(err.message.contains("ws:// or wss://"), "{err:?}");
        assert!(err.message.contains("Nothing was changed"), "{err:?}");
        let bad_room = Invite {
            server: None,
            room: Some(" ".into()),
        };
        assert!(bad_room
            .apply(&saved, None)
            .unwrap_err()
            .message
            .starts_with("Room"));

        // The same server: the token stays.
        let same = Invite {
            server: Some(" ws://old:1 ".into()),
            room: Some("team".into()),
        };
        let (settings, notice) = same.apply(&saved, None).unwrap();
        assert_eq!(settings.room, "team");
        assert_eq!(settings.token, saved.token);
        assert_eq!(notice, None);

        // Another server never gets it.
        let other = Invite {
            server: Some("ws://new:2".into()),
            room: None,
        };
        let (settings, notice) = other.apply(&saved, None).unwrap();
        assert_eq!(settings.server_url.as_deref(), Some("ws://new:2"));
        assert_eq!((settings.room.as_str(), settings.token), ("general", None));
        assert!(notice.unwrap().contains("token was not sent"));

        // The app's own server is "the embedded server".
        let own = Invite {
            server: Some("ws://127.0.0.1:3000".into()),
            room: None,
        };
        let (settings, _) = own.apply(&saved, Some("ws://127.0.0.1:3000")).unwrap();
        assert_eq!(settings.server_url, None);
    }

    /// The packages' desktop entry hands the link to the app: a handler of
    /// the scheme whose command line has no `%u` is started without it.
    #[test]
    fn the_packaged_desktop_entry_passes_links_to_the_app() {
        let config: serde_json::Value =
            serde_json::from_str(include_str!("../tauri.conf.json")).expect("tauri.conf.json");
        assert_eq!(
            config["plugins"]["deep-link"]["desktop"]["schemes"],
            serde_json::json!([SCHEME])
        );
        for package in ["deb", "rpm"] {
            assert_eq!(
                config["bundle"]["linux"][package]["desktopTemplate"],
                "linux/mesh-presence.desktop",
                "{package}"
            );
        }
        let entry = include_str!("../linux/mesh-presence.desktop");
        let exec = entry
            .lines()
            .find(|l| l.starts_with("Exec="))
            .expect("Exec");
        assert!(exec.ends_with(" %u"), "{exec}");
        assert!(entry.contains("MimeType={{mime_type}}"), "{entry}");
    }
}
