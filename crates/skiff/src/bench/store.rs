//! `skiff bench store`: puts/s and latency with 1 and 8 writers, a range of 10,000 keys,
//! and watch fan-out to 100 watchers, against the embedded store and etcd in one run.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use skiff_storage::embedded::{Config, Embedded};
use skiff_storage::etcd::local::LocalEtcd;
use skiff_storage::etcd::{EtcdConfig, EtcdStore};
use skiff_storage::{KeyRange, Store};

use super::stats::{Samples, ms};

#[derive(clap::Args)]
pub struct StoreBench {
    /// Which backends to measure.
    #[arg(long, value_enum, default_value = "both")]
    backend: Which,
    /// An etcd to measure; without it, a private etcd is started on loopback.
    #[arg(long)]
    etcd_endpoint: Option<String>,
    /// Where the embedded store lives during the run (default: a temporary directory).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Writes per put scenario.
    #[arg(long, default_value_t = 5000)]
    puts: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    /// Keys in the range scenario.
    #[arg(long, default_value_t = 10_000)]
    range_keys: usize,
    /// Watchers in the fan-out scenario.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Events written in the fan-out scenario.
    #[arg(long, default_value_t = 500)]
    watch_events: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Which {
    Embedded,
    Etcd,
    Both,
}

/// One measured figure: a label, a value for the table, and a number for the ratio.
struct Figure {
    label: String,
    shown: String,
    value: f64,
    higher_is_better: bool,
}

impl StoreBench {
    pub async fn run(self) -> Result<()> {
        let mut columns: Vec<(&str, Vec<Figure>)> = Vec::new();
        if self.backend != Which::Etcd {
            let dir = tempfile::tempdir()?;
            let mut config = Config::new(self.data_dir.as_deref().unwrap_or(dir.path()));
            config.compaction_interval = None;
            let store = Embedded::open(&config).context("opening the embedded store")?;
            eprintln!("embedded store at {}", store.path().display());
            columns.push(("embedded", self.measure(&store, "embedded").await?));
        }
        if self.backend != Which::Embedded {
            let (_local, config) = match &self.etcd_endpoint {
                Some(endpoint) => (
                    None,
                    EtcdConfig {
                        endpoints: vec![endpoint.clone()],
                        prefix: format!("/skiff-bench-{}", std::process::id()).into_bytes(),
                        ..Default::default()
                    },
                ),
                None => {
                    let local = LocalEtcd::start().await.context("starting a local etcd")?;
                    eprintln!("local etcd at {}", local.endpoint());
                    let config = local.config("/skiff-bench");
                    (Some(local), config)
                }
            };
            let store = EtcdStore::connect(&config)
                .await
                .context("connecting to etcd")?;
            columns.push(("etcd", self.measure(&store, "etcd").await?));
        }
        print_table(&columns);
        Ok(())
    }

    async fn measure(&self, store: &dyn Store, name: &str) -> Result<Vec<Figure>> {
        let mut figures = Vec::new();
        for writers in [1, 8] {
            let (rate, mut latency) = self.puts(store, name, writers).await?;
            figures.push(Figure {
                label: format!(
                    "puts/s, {writers} writer{}",
                    if writers > 1 { "s" } else { "" }
                ),
                shown: format!("{rate:.0}"),
                value: rate,
                higher_is_better: true,
            });
            for p in [50.0, 99.0] {
                let d = latency.percentile(p);
                figures.push(Figure {
                    label: format!(
                        "put p{p:.0}, {writers} writer{}",
                        if writers > 1 { "s" } else { "" }
                    ),
                    shown: ms(d),
                    value: d.as_secs_f64(),
                    higher_is_better: false,
                });
            }
        }
        let mut range = self.range(store, name).await?;
        for p in [50.0, 99.0] {
            let d = range.percentile(p);
            figures.push(Figure {
                label: format!("range {} keys p{p:.0}", self.range_keys),
                shown: ms(d),
                value: d.as_secs_f64(),
                higher_is_better: false,
            });
        }
        let mut fanout = self.fanout(store, name).await?;
        for p in [50.0, 99.0] {
            let d = fanout.percentile(p);
            figures.push(Figure {
                label: format!("watch delivery p{p:.0}, {} watchers", self.watchers),
                shown: ms(d),
                value: d.as_secs_f64(),
                higher_is_better: false,
            });
        }
        Ok(figures)
    }

    fn value(&self) -> Bytes {
        Bytes::from(vec![b'v'; self.value_size])
    }

    /// `self.puts` creates spread over `writers` concurrent clients.
    async fn puts(&self, store: &dyn Store, name: &str, writers: usize) -> Result<(f64, Samples)> {
        let bar = progress(self.puts, &format!("{name}: puts, {writers} writers"));
        let value = self.value();
        let started = Instant::now();
        let per_writer = self.puts / writers;
        let results = futures::future::join_all((0..writers).map(|w| {
            let (value, bar) = (value.clone(), bar.clone());
            async move {
                let mut samples = Samples::with_capacity(per_writer);
                for i in 0..per_writer {
                    let key = format!("/bench/puts{writers}/{w}/{i:08}");
                    let t = Instant::now();
                    store.create(key.as_bytes(), value.clone()).await?;
                    samples.push(t.elapsed());
                    bar.inc(1);
                }
                anyhow::Ok(samples)
            }
        }))
        .await;
        let elapsed = started.elapsed();
        bar.finish_and_clear();
        let mut all = Samples::with_capacity(self.puts);
        for samples in results {
            all.extend(samples?);
        }
        Ok((all.len() as f64 / elapsed.as_secs_f64(), all))
    }

    /// Loads `range_keys` keys, then reads them all in one range, repeatedly.
    async fn range(&self, store: &dyn Store, name: &str) -> Result<Samples> {
        let bar = progress(self.range_keys, &format!("{name}: loading range keys"));
        let value = self.value();
        futures::stream::iter(0..self.range_keys)
            .map(|i| {
                let (value, bar) = (value.clone(), bar.clone());
                async move {
                    store
                        .create(format!("/bench/range/{i:08}").as_bytes(), value)
                        .await?;
                    bar.inc(1);
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        bar.finish_and_clear();
        let reads = 30;
        let bar = progress(reads, &format!("{name}: range reads"));
        let mut samples = Samples::with_capacity(reads);
        for _ in 0..reads {
            let t = Instant::now();
            let response = store
                .range(&KeyRange::prefix("/bench/range/"), None, None)
                .await?;
            samples.push(t.elapsed());
            anyhow::ensure!(
                response.kvs.len() == self.range_keys,
                "range returned {} keys",
                response.kvs.len()
            );
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(samples)
    }

    /// `watchers` watches on one prefix; one writer; latency from just before the write is
    /// sent to each watcher's receipt of the event.
    async fn fanout(&self, store: &dyn Store, name: &str) -> Result<Samples> {
        let events = self.watch_events;
        let sent: Arc<Vec<OnceLock<Instant>>> =
            Arc::new((0..events).map(|_| OnceLock::new()).collect());
        let mut streams = Vec::with_capacity(self.watchers);
        for _ in 0..self.watchers {
            streams.push(store.watch(&KeyRange::prefix("/bench/watch/"), 0).await?);
        }
        let bar = progress(events * self.watchers, &format!("{name}: watch fan-out"));
        let receivers: Vec<_> = streams
            .into_iter()
            .map(|mut stream| {
                let (sent, bar) = (sent.clone(), bar.clone());
                tokio::spawn(async move {
                    let mut samples = Samples::with_capacity(events);
                    while samples.len() < events {
                        let event = tokio::time::timeout(Duration::from_secs(60), stream.next())
                            .await
                            .context("watch stalled")?
                            .context("watch ended")??;
                        let received = Instant::now();
                        let index: usize = std::str::from_utf8(&event.kv.key)?
                            .rsplit('/')
                            .next()
                            .context("key")?
                            .parse()?;
                        let at = sent[index]
                            .get()
                            .context("event before its write was sent")?;
                        samples.push(received.duration_since(*at));
                        bar.inc(1);
                    }
                    anyhow::Ok(samples)
                })
            })
            .collect();
        let value = self.value();
        for (i, slot) in sent.iter().enumerate() {
            let _ = slot.set(Instant::now());
            store
                .create(format!("/bench/watch/{i:08}").as_bytes(), value.clone())
                .await?;
        }
        let mut all = Samples::with_capacity(events * self.watchers);
        for receiver in receivers {
            all.extend(receiver.await??);
        }
        bar.finish_and_clear();
        Ok(all)
    }
}

pub(super) fn progress(len: usize, message: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:32} [{bar:30}] {pos}/{len} {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar
}

/// A markdown table, one column per backend, with embedded-vs-etcd ratios when both ran.
fn print_table(columns: &[(&str, Vec<Figure>)]) {
    let Some((_, first)) = columns.first() else {
        return;
    };
    let both = columns.len() == 2;
    let mut header = String::from("| metric |");
    let mut rule = String::from("|---|");
    for (name, _) in columns {
        header += &format!(" {name} |");
        rule += "---|";
    }
    if both {
        header += " embedded vs etcd |";
        rule += "---|";
    }
    println!("{header}\n{rule}");
    for (i, figure) in first.iter().enumerate() {
        let mut row = format!("| {} |", figure.label);
        for (_, figures) in columns {
            row += &format!(" {} |", figures[i].shown);
        }
        if both {
            let (a, b) = (columns[0].1[i].value, columns[1].1[i].value);
            let ratio = if figure.higher_is_better {
                a / b
            } else {
                b / a
            };
            if ratio >= 1.0 {
                row += &format!(" {ratio:.1}x better |");
            } else {
                row += &format!(" {:.1}x worse |", 1.0 / ratio);
            }
        }
        println!("{row}");
    }
}
