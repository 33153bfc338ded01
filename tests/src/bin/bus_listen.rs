//! `smvs-bus-listen ADDRESS SECONDS`: subscribes to every signal on the bus at ADDRESS, as any
//! local program may, prints `ready` once subscribed, then one line per signal from smvsd's
//! object (`MEMBER`), and exits after SECONDS. The D-Bus tests run it as a user outside group
//! `smvs` to show that smvsd's signals do not reach such a user.

use std::time::Duration;

use futures::StreamExt;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(address), Some(seconds)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: smvs-bus-listen ADDRESS SECONDS");
    };
    let seconds: u64 = seconds.parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let connection = zbus::connection::Builder::address(address.as_str())
            .build()
            .await?;
        let mut signals =
            zbus::MessageStream::for_match_rule("type='signal'", &connection, None).await?;
        println!("ready");
        let listen = async {
            while let Some(Ok(message)) = signals.next().await {
                let header = message.header();
                let ours = header
                    .path()
                    .is_some_and(|p| p.as_str().starts_with("/org/smvs"));
                if ours {
                    let member = header.member().map(|m| m.to_string()).unwrap_or_default();
                    println!("{member}");
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(seconds), listen).await;
        anyhow::Ok(())
    })
}
