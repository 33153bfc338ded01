//! The desktop's notifications (`org.freedesktop.Notifications` on the session bus): showing
//! and updating them, and hearing which of their buttons the user pressed.

use std::collections::HashMap;

use futures::{Stream, StreamExt};

use crate::error::CtlError;

const NAME: &str = "org.freedesktop.Notifications";
const PATH: &str = "/org/freedesktop/Notifications";

pub struct Desktop {
    session: zbus::Connection,
}

impl Desktop {
    pub async fn connect() -> Result<Desktop, CtlError> {
        let session = zbus::Connection::session()
            .await
            .map_err(|e| CtlError::Local(format!("cannot reach the session bus: {e}")))?;
        Ok(Desktop { session })
    }

    pub fn session(&self) -> &zbus::Connection {
        &self.session
    }

    /// Shows a notification, or updates the one `replaces` names (0: a new one); `actions`
    /// are (key, label) buttons. Returns its id, 0 if the desktop did not show it.
    pub async fn notify(
        &self,
        replaces: u32,
        summary: &str,
        body: &str,
        actions: &[(&str, &str)],
    ) -> u32 {
        let hints: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
        let actions: Vec<&str> = actions.iter().flat_map(|(k, l)| [*k, *l]).collect();
        let result = self
            .session
            .call_method(
                Some(NAME),
                PATH,
                Some(NAME),
                "Notify",
                &("SMVS", replaces, "", summary, body, actions, hints, -1i32),
            )
            .await;
        match result.and_then(|reply| reply.body().deserialize::<u32>()) {
            Ok(id) => id,
            Err(e) => {
                eprintln!("smvsctl agent: notification not shown: {e}");
                0
            }
        }
    }

    /// The buttons pressed on our notifications: (notification id, action key).
    pub async fn actions(&self) -> Result<impl Stream<Item = (u32, String)> + 'static, CtlError> {
        let proxy = zbus::Proxy::new(&self.session, NAME, PATH, NAME)
            .await
            .map_err(|e| CtlError::Local(format!("cannot address {NAME}: {e}")))?;
        let invoked = proxy
            .receive_signal("ActionInvoked")
            .await
            .map_err(|e| CtlError::Local(format!("cannot subscribe to ActionInvoked: {e}")))?;
        Ok(invoked
            .filter_map(|signal| async move { signal.body().deserialize::<(u32, String)>().ok() }))
    }
}
