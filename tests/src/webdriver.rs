//! A small W3C WebDriver client: just the endpoints the tests use.

use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

/// The W3C key under which an element reference travels.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A WebDriver failure, with the driver's own message.
#[derive(Debug, thiserror::Error)]
pub enum WebDriverError {
    /// The driver answered with an error.
    #[error("webdriver {status}: {body}")]
    Driver {
        /// HTTP status.
        status: u16,
        /// The error body.
        body: String,
    },
    /// The driver could not be reached or answered garbage.
    #[error("webdriver transport: {0}")]
    Transport(String),
}

/// One WebDriver session (one launched app).
pub struct Session {
    base: String,
    agent: ureq::Agent,
}

/// An element found on the page.
#[derive(Debug, Clone)]
pub struct Element(String);

fn call(req: ureq::Request, body: Option<Value>) -> Result<Value, WebDriverError> {
    let result = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match result {
        Ok(resp) => {
            let v: Value = resp
                .into_json()
                .map_err(|e| WebDriverError::Transport(e.to_string()))?;
            Ok(v.get("value").cloned().unwrap_or(Value::Null))
        }
        Err(ureq::Error::Status(status, resp)) => Err(WebDriverError::Driver {
            status,
            body: resp.into_string().unwrap_or_default(),
        }),
        Err(e) => Err(WebDriverError::Transport(e.to_string())),
    }
}

impl Session {
    /// Starts a session on the driver at `driver_url` with `capabilities`
    /// (`alwaysMatch`), which launches the application.
    pub fn start(driver_url: &str, capabilities: Value) -> Result<Session, WebDriverError> {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(120))
            .build();
        let value = call(
            agent.post(&format!("{driver_url}/session")),
            Some(json!({"capabilities": {"alwaysMatch": capabilities}})),
        )?;
        let id = value["sessionId"]
            .as_str()
            .ok_or_else(|| WebDriverError::Transport(format!("no sessionId in {value}")))?;
        Ok(Session {
            base: format!("{driver_url}/session/{id}"),
            agent,
        })
    }

    fn post(&self, path: &str, body: Value) -> Result<Value, WebDriverError> {
        call(self.agent.post(&format!("{}{path}", self.base)), Some(body))
    }

    fn get(&self, path: &str) -> Result<Value, WebDriverError> {
        call(self.agent.get(&format!("{}{path}", self.base)), None)
    }

    /// The first element matching a CSS selector.
    pub fn find(&self, css: &str) -> Result<Element, WebDriverError> {
        let v = self.post("/element", json!({"using": "css selector", "value": css}))?;
        v[ELEMENT_KEY]
            .as_str()
            .map(|id| Element(id.to_string()))
            .ok_or_else(|| WebDriverError::Transport(format!("no element in {v}")))
    }

    /// Clicks an element.
    pub fn click(&self, el: &Element) -> Result<(), WebDriverError> {
        self.post(&format!("/element/{}/click", el.0), json!({}))
            .map(drop)
    }

    /// Empties an input.
    pub fn clear(&self, el: &Element) -> Result<(), WebDriverError> {
        self.post(&format!("/element/{}/clear", el.0), json!({}))
            .map(drop)
    }

    /// Types `text` into an element, as keystrokes.
    pub fn type_text(&self, el: &Element, text: &str) -> Result<(), WebDriverError> {
        self.post(&format!("/element/{}/value", el.0), json!({"text": text}))
            .map(drop)
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page
    /// and returns what it returns.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value, WebDriverError> {
        self.post("/execute/sync", json!({"script": script, "args": args}))
    }

    /// The handles of every window of the session.
    pub fn window_handles(&self) -> Result<Vec<String>, WebDriverError> {
        let v = self.get("/window/handles")?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|h| h.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The handle of the window commands go to.
    pub fn window_handle(&self) -> Result<String, WebDriverError> {
        let v = self.get("/window")?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// Sends the next commands to the window `handle`.
    pub fn switch_to_window(&self, handle: &str) -> Result<(), WebDriverError> {
        self.post("/window", json!({ "handle": handle })).map(drop)
    }

    /// A PNG screenshot of the current window.
    pub fn screenshot(&self) -> Result<Vec<u8>, WebDriverError> {
        let v = self.get("/screenshot")?;
        let b64 = v
            .as_str()
            .ok_or_else(|| WebDriverError::Transport("screenshot is not a string".into()))?;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| WebDriverError::Transport(e.to_string()))
    }

    /// Ends the session, which closes the application.
    pub fn end(&self) -> Result<(), WebDriverError> {
        call(self.agent.delete(&self.base), None).map(drop)
    }
}
