//! Connection metadata: merge strategies, and who may read whose.

use crate::common::{BackendKind, Peer};
use mesh_protocol::command;
use serde_json::{json, Value};

async fn metadata_strategies_and_privacy(kind: BackendKind) {
    let server = kind.serve_every_room().await;
    let mut a = Peer::connect(&server.url()).await;
    let mut b = Peer::connect(&server.url()).await;
    let set = |metadata: Value, strategy: &str| json!({"metadata": metadata, "options": {"strategy": strategy}});

    let mine = a
        .request(command::GET_MY_CONNECTION_METADATA, json!({}))
        .await;
    assert_eq!(mine, json!({"metadata": null}), "unset is null");
    let base = json!({"name": "Ada", "prefs": {"theme": "dark", "lang": "en"}, "tags": [1, 2]});
    let reply = a
        .request(command::SET_MY_CONNECTION_METADATA, set(base, "replace"))
        .await;
    assert_eq!(reply, json!({"success": true}));
    a.request(
        command::SET_MY_CONNECTION_METADATA,
        set(
            json!({"prefs": {"theme": "light"}, "tags": [3]}),
            "deepMerge",
        ),
    )
    .await;
    let mine = a.my_metadata().await;
    assert_eq!(
        mine,
        json!({"name": "Ada", "prefs": {"theme": "light", "lang": "en"}, "tags": [3]})
    );
    a.request(
        command::SET_MY_CONNECTION_METADATA,
        set(json!({"prefs": {"size": 2}}), "merge"),
    )
    .await;
    let mine = a.my_metadata().await;
    assert_eq!(
        mine,
        json!({"name": "Ada", "prefs": {"size": 2}, "tags": [3]})
    );
    a.request(
        command::SET_MY_CONNECTION_METADATA,
        json!({"metadata": {"only": true}}),
    )
    .await;
    let expected = json!({"only": true});

    let ask = json!({"connectionId": a.id});
    // No shared room: b learns nothing, not even that `a` exists.
    let reply = b
        .request(command::GET_CONNECTION_METADATA, ask.clone())
        .await;
    assert_eq!(reply, json!({"metadata": null}));
    // Sharing a room, or watching its presence, lets b see a's metadata.
    a.join("team").await;
    b.subscribe("team").await;
    let reply = b
        .request(command::GET_CONNECTION_METADATA, ask.clone())
        .await;
    assert_eq!(reply["metadata"], expected);
    b.request(command::UNSUBSCRIBE_PRESENCE, json!({"roomName": "team"}))
        .await;
    b.join("team").await;
    let reply = b
        .request(command::GET_CONNECTION_METADATA, ask.clone())
        .await;
    assert_eq!(reply["metadata"], expected);
    // Unknown connections are null, never an error.
    let reply = b
        .request(
            command::GET_CONNECTION_METADATA,
            json!({"connectionId": "nobody"}),
        )
        .await;
    assert_eq!(reply, json!({"metadata": null}));
    server.shutdown().await;

    // Open metadata: anyone may ask.
    let server = kind.serve_with(|b| b.open_metadata(true)).await;
    let mut a = Peer::connect(&server.url()).await;
    let mut b = Peer::connect(&server.url()).await;
    a.request(
        command::SET_MY_CONNECTION_METADATA,
        json!({"metadata": {"open": 1}}),
    )
    .await;
    let metadata = b.metadata_of(&a.id).await;
    assert_eq!(metadata, json!({"open": 1}));
    server.shutdown().await;
}

suite!(metadata_strategies_and_privacy);
