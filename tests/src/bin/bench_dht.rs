//! `make bench`: look-ups in the hosts' DHT, with node churn.
//!
//! Runs `SMVS_BENCH_DHT_NODES` (default 40) DHT nodes as smvsd runs them (`smvsd::trust::
//! DhtNode`, the same code: server mode, joined through the first two nodes), each on its own
//! 127.0.79.x address in this process. `SMVS_BENCH_DHT_RECORDS` (default 30) users publish a
//! record their identity signed, each from a node of its own. Then, for 0%, 30% and 50% of the
//! nodes killed (dropped: their sockets close, as a host that dies), every record is looked up
//! from a surviving node that did not publish it, and checked as smvsd checks it. No record is
//! republished between the kills: the worst case, a churn faster than the republish period.
//!
//! Prints a table (success rate; latency p50/p90/max) and one `json {…}` line per
//! row.

use std::net::{SocketAddr, SocketAddrV4};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use smvs_crypto::{AgreementKeyPair, IdentityKeys, SigningPublicKey};
use smvs_directory::record::{dht_record_value, TransportCertificate};
use smvs_directory::UserRecord;
use smvs_schema::{HostAddress, Username};
use smvsd::config::DhtConfig;
use smvsd::trust::DhtNode;

struct Published {
    name: Username,
    /// The node it was put from (not asked about it).
    from: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn start_node(i: usize, bootstrap: &[String]) -> anyhow::Result<DhtNode> {
    let listen: SocketAddrV4 = format!("127.0.79.{}:0", i + 1).parse()?;
    let config = DhtConfig {
        listen: Some(listen),
        bootstrap: bootstrap.to_vec(),
        republish: Duration::from_secs(1200),
    };
    DhtNode::start(&config, listen, &[])
        .await
        .map_err(|e| anyhow::anyhow!(e))
}

async fn publish(node: &DhtNode, i: usize) -> anyhow::Result<Username> {
    let identity = IdentityKeys::generate()?;
    let name = Username::parse(&smvs_crypto::identity_address(&identity.signing.public()))?;
    let transport = AgreementKeyPair::generate()?;
    let not_after = smvs_directory::clock::now_ms() + 24 * 3600 * 1000;
    let cert = TransportCertificate::sign_locally(&identity, &name, transport.public(), not_after);
    let serial = smvs_directory::clock::now_ms() as u64;
    let user = UserRecord {
        username: name.clone(),
        identity: identity.bundle(),
        transport_key: cert.key,
        transport_certificate: cert.certificate,
        transport_not_after: cert.not_after,
        host_address: HostAddress::parse(&format!("127.0.80.{}:7421", i % 250 + 1))?,
        serial,
        session_keys: None,
    };
    let value =
        dht_record_value(&user, smvs_directory::clock::now_ms()).map_err(|e| anyhow::anyhow!(e))?;
    let signature = identity.signing.sign_dht_record(serial as i64, &value);
    let key: SigningPublicKey = identity.signing.public();
    node.put(&key, &value, serial as i64, &signature)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(name)
}

fn main() -> anyhow::Result<()> {
    let nodes_wanted = smvs_tests::count_from_env("SMVS_BENCH_DHT_NODES", 40).max(4);
    let records = smvs_tests::count_from_env("SMVS_BENCH_DHT_RECORDS", 30).max(1);
    smvs_tests::runtime::run_local(async move {
        println!(
            "SMVS DHT: {nodes_wanted} nodes (smvsd's DhtNode) on 127.0.79.x, {records} records, no republish during churn"
        );
        let started = Instant::now();
        let mut nodes: Vec<Option<Rc<DhtNode>>> = Vec::new();
        let mut bootstrap: Vec<String> = Vec::new();
        for i in 0..nodes_wanted {
            let node = start_node(i, &bootstrap).await?;
            if bootstrap.len() < 2 {
                bootstrap.push(SocketAddr::V4(node.local_addr()).to_string());
            }
            nodes.push(Some(Rc::new(node)));
        }
        // Let the routing tables fill (each node refreshes through what it learnt).
        tokio::time::sleep(Duration::from_secs(5)).await;
        println!(
            "{} DHT nodes up in {:.1} s",
            nodes.len(),
            started.elapsed().as_secs_f64()
        );
        let mut published = Vec::new();
        let mut put_times = Vec::new();
        for r in 0..records {
            let from = (r * 7 + 3) % nodes.len();
            let node = nodes[from].clone().context("node")?;
            let t = Instant::now();
            let name = publish(&node, r).await?;
            put_times.push(t.elapsed());
            published.push(Published { name, from });
        }
        put_times.sort();
        println!(
            "put {} records: p50 {:.0} ms, max {:.0} ms",
            records,
            ms(percentile(&put_times, 0.5)),
            ms(put_times[put_times.len() - 1])
        );
        println!("| killed | nodes alive | look-ups | found | p50 ms | p90 ms | max ms |");
        println!("|-------:|------------:|---------:|------:|-------:|-------:|-------:|");
        let mut killed = 0usize;
        for percent in [0usize, 30, 50] {
            let target = nodes.len() * percent / 100;
            // Kill nodes spread over the list, the first (everyone's bootstrap) among them.
            let mut i = 0;
            while killed < target {
                if nodes[i].is_some() {
                    nodes[i] = None;
                    killed += 1;
                }
                i = (i + 3) % nodes.len();
            }
            let alive: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].is_some()).collect();
            let mut times = Vec::new();
            let mut found = 0;
            for (r, p) in published.iter().enumerate() {
                let asker = alive
                    .iter()
                    .cycle()
                    .skip(r * 5)
                    .find(|&&a| a != p.from)
                    .copied()
                    .context("a surviving node")?;
                let node = nodes[asker].clone().context("alive")?;
                let t = Instant::now();
                let result = node.find(&p.name).await;
                times.push(t.elapsed());
                match result {
                    Ok(record) if record.user.username == p.name => found += 1,
                    Ok(_) => anyhow::bail!("a record of another name"),
                    Err(e) => eprintln!("look-up with {percent}% killed failed: {e}"),
                }
            }
            times.sort();
            let (p50, p90, max) = (
                percentile(&times, 0.5),
                percentile(&times, 0.9),
                times[times.len() - 1],
            );
            println!(
                "| {percent:>5}% | {:>11} | {:>8} | {:>5} | {:>6.0} | {:>6.0} | {:>6.0} |",
                alive.len(),
                published.len(),
                found,
                ms(p50),
                ms(p90),
                ms(max)
            );
            println!(
                "json {}",
                serde_json::json!({
                    "bench": "dht-lookup", "killed_percent": percent, "nodes": nodes.len(),
                    "alive": alive.len(), "lookups": published.len(), "found": found,
                    "p50_ms": ms(p50), "p90_ms": ms(p90), "max_ms": ms(max),
                })
            );
        }
        Ok::<_, anyhow::Error>(())
    })?
}
