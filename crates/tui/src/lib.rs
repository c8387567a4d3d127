//! `foodpipe watch`: the live picture of a topic and a consumer group in
//! the terminal: partitions (log start and end, stored offset, lag,
//! owner, epoch, events/s, state), members, totals, and a key explorer.
//!
//! - [`model`]: readings in, [`Snapshot`]s out; remembers what only a
//!   sequence of readings tells (rates, stalls, rebalances). No I/O.
//! - [`render`]: a snapshot and the [`View`] drawn into a ratatui buffer,
//!   a pure function (tested on ratatui's `TestBackend`).
//! - here: reading the broker and PostgreSQL (a [`ReadOnlyStore`]: its
//!   sessions refuse writes), the refresh
//!   task, the terminal loop and `--once`.
//!
//! As the ratatui templates do it: a data task sends snapshots to the UI
//! loop, which draws the newest one on every snapshot and every key. A
//! broker or database that stops answering becomes a banner over the last
//! good values; the loop never stops for it. The terminal is restored on
//! every exit path: `q`, Ctrl-C, SIGTERM, an error, and a panic (ratatui's
//! hook).
//!
//! # References
//!
//! - ratatui's "async" template (snapshot channel, `TestBackend` tests).
//! - no-color.org: `NO_COLOR` set and not empty turns colour off.

pub mod model;
pub mod render;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use kafka::{Client, KafkaConfig, PartitionOffsets, TopicOffsets};
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use store::{Store, StoreConfig};

pub use model::{Judgement, KeyPlacement, PartitionState, Reading, Snapshot, Tracker};
pub use render::{Action, Drawn, Key, View, buffer_text, draw, full_height};

/// What `watch` shows and how.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub topic: String,
    pub group: String,
    /// Time between readings.
    pub refresh: Duration,
    /// How long one side (broker or PostgreSQL) may take to answer a
    /// reading before it is shown as failing.
    pub read_timeout: Duration,
    pub judgement: Judgement,
    /// Colour on; false under `NO_COLOR`.
    pub color: bool,
    /// Open the key explorer with this key.
    pub key: Option<String>,
}

/// True unless `NO_COLOR` is set to something (no-color.org).
pub fn color_wanted() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The terminal's width in columns, if it can be asked.
pub fn terminal_width() -> Option<u16> {
    ratatui::crossterm::terminal::size().ok().map(|(w, _)| w)
}

/// Fails if the broker answers and does not have `topic`: a mistyped
/// topic is a wrong flag, not something to watch. A broker that does not
/// answer is not an error here: the view shows it.
pub async fn check_topic(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<()> {
    if let Ok(client) = kafka::connect(kafka).await
        && let Ok(None) = kafka::topic_partitions(&client, topic).await
    {
        return Err(kafka::Error::UnknownTopic {
            topic: topic.to_owned(),
        }
        .into());
    }
    Ok(())
}

/// The broker side: a client and the topic's partition connections, made
/// on first use and again after any failure.
#[derive(Debug)]
struct Broker {
    config: KafkaConfig,
    topic: String,
    client: Option<Arc<Client>>,
    offsets: Option<TopicOffsets>,
}

impl Broker {
    async fn read(&mut self) -> Result<Vec<PartitionOffsets>, String> {
        let answer = match self.offsets.as_ref() {
            Some(offsets) => offsets.read().await.map_err(anyhow::Error::from),
            None => self.connect_and_read().await,
        };
        answer.map_err(|e| {
            // Start afresh next time: the leaders may have moved, or the
            // topic may have been recreated with another partition count.
            self.client = None;
            self.offsets = None;
            format!("{e:#}")
        })
    }

    async fn connect_and_read(&mut self) -> anyhow::Result<Vec<PartitionOffsets>> {
        let client = match &self.client {
            Some(c) => Arc::clone(c),
            None => {
                let c = Arc::new(kafka::connect(&self.config).await?);
                self.client = Some(Arc::clone(&c));
                c
            }
        };
        let offsets = TopicOffsets::new(&client, &self.topic).await?;
        let read = offsets.read().await?;
        self.offsets = Some(offsets);
        Ok(read)
    }
}

/// The database as `watch` holds it: every transaction of every connection
/// read-only, so PostgreSQL itself refuses a write whatever this crate
/// asks. Only [`open_store`] makes one, and [`run`] and [`once`] take
/// nothing else.
#[derive(Debug, Clone)]
pub struct ReadOnlyStore(Store);

impl ReadOnlyStore {
    /// The pool, for reading. Its sessions refuse writes.
    pub fn store(&self) -> &Store {
        &self.0
    }
}

/// Connects for `watch` ([`StoreConfig::read_only`]) and checks that the
/// schema holds foodpipe's tables; never creates or migrates anything.
pub async fn open_store(config: &StoreConfig) -> anyhow::Result<ReadOnlyStore> {
    let store = Store::connect(&StoreConfig {
        read_only: true,
        ..config.clone()
    })
    .await?;
    store.check_migrated().await?;
    Ok(ReadOnlyStore(store))
}

/// Reads the group's side in PostgreSQL, with the store's existing
/// read-only queries.
async fn read_db(store: &Store, group: &str, topic: &str) -> anyhow::Result<model::DbReading> {
    let generation = store
        .groups()
        .await?
        .into_iter()
        .find(|g| g.group_id == group)
        .map_or(0, |g| g.generation);
    Ok(model::DbReading {
        owners: store.owners(group, topic).await?,
        members: store.members(group).await?,
        generation,
        dead_letter_total: store.dead_letter_count(group, topic).await?,
        dead_letters: store.dead_letters(group, topic, None, 3).await?,
        gaps: store.offset_gaps(group, topic, 1).await?,
        projections: store.projection_states().await?,
    })
}

/// Both sides, read concurrently, each within `read_timeout`.
#[derive(Debug)]
struct Sources {
    store: ReadOnlyStore,
    broker: Broker,
    config: WatchConfig,
}

impl Sources {
    fn new(store: ReadOnlyStore, kafka: KafkaConfig, config: WatchConfig) -> Self {
        Self {
            store,
            broker: Broker {
                config: kafka,
                topic: config.topic.clone(),
                client: None,
                offsets: None,
            },
            config,
        }
    }

    async fn read(&mut self) -> Reading {
        let limit = self.config.read_timeout;
        let late = move || format!("no answer within {}s", limit.as_secs_f64());
        let db = read_db(self.store.store(), &self.config.group, &self.config.topic);
        let broker = self.broker.read();
        let (broker, db) = tokio::join!(
            tokio::time::timeout(limit, broker),
            tokio::time::timeout(limit, db),
        );
        if broker.is_err() {
            // Abandoned half way: connect afresh next time.
            self.broker.client = None;
            self.broker.offsets = None;
        }
        Reading {
            broker: broker.unwrap_or_else(|_| Err(late())),
            db: match db {
                Ok(Ok(db)) => Ok(db),
                Ok(Err(e)) => Err(format!("{e:#}")),
                Err(_) => Err(late()),
            },
            at: chrono::Utc::now(),
        }
    }
}

/// One frame as plain text, `width` columns wide and as tall as it takes
/// to show every partition and member: two readings `refresh` apart, so
/// events/s are real rates. Never writes to the database.
pub async fn once(
    store: ReadOnlyStore,
    kafka: KafkaConfig,
    config: WatchConfig,
    width: u16,
) -> anyhow::Result<String> {
    let view = View {
        explorer: config.key.clone(),
        ..View::default()
    };
    let refresh = config.refresh;
    let mut tracker = Tracker::new(&config.topic, &config.group, config.judgement);
    let mut sources = Sources::new(store, kafka, config);
    let start = Instant::now();
    tracker.update(sources.read().await, Duration::ZERO);
    tokio::time::sleep(refresh).await;
    let reading = sources.read().await;
    let snapshot = tracker.update(reading, start.elapsed());
    let area = Rect::new(0, 0, width, full_height(&snapshot, &view));
    let mut buf = Buffer::empty(area);
    draw(&snapshot, &view, area, &mut buf);
    Ok(buffer_text(&buf))
}

/// The terminal in raw mode on the alternate screen, restored when
/// dropped: on every way out of [`run`].
struct Screen(ratatui::DefaultTerminal);

impl Screen {
    fn enter() -> anyhow::Result<Self> {
        ratatui::try_init()
            .map(Self)
            .context("cannot set up the terminal for watch (use --once to print one frame)")
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// What the key-reading thread sends.
#[derive(Debug)]
enum Input {
    Key(Key),
    Resize,
}

fn map_key(event: &ratatui::crossterm::event::KeyEvent) -> Option<Key> {
    use ratatui::crossterm::event::{KeyCode, KeyEventKind, KeyModifiers};
    if event.kind == KeyEventKind::Release {
        return None;
    }
    Some(match event.code {
        KeyCode::Char('c') if event.modifiers.contains(KeyModifiers::CONTROL) => Key::Interrupt,
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        _ => return None,
    })
}

/// Reads terminal events on a thread of its own (crossterm's reads
/// block) until `stop` is set or the loop is gone.
fn read_keys(tx: tokio::sync::mpsc::Sender<Input>, stop: Arc<AtomicBool>) {
    use ratatui::crossterm::event::{self, Event};
    while !stop.load(Ordering::Relaxed) {
        let input = match event::poll(Duration::from_millis(100)) {
            Ok(false) => continue,
            Ok(true) => match event::read() {
                Ok(Event::Key(k)) => map_key(&k).map(Input::Key),
                Ok(Event::Resize(..)) => Some(Input::Resize),
                Ok(_) => None,
                Err(_) => return,
            },
            Err(_) => return,
        };
        if let Some(input) = input
            && tx.blocking_send(input).is_err()
        {
            return;
        }
    }
}

/// The full-screen view, refreshed every `config.refresh`, until `q`,
/// Ctrl-C or `shutdown`. Never writes to the database.
pub async fn run(
    store: ReadOnlyStore,
    kafka: KafkaConfig,
    config: WatchConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut view = View {
        explorer: config.key.clone(),
        color: config.color,
        ..View::default()
    };
    let refresh = config.refresh;
    let mut tracker = Tracker::new(&config.topic, &config.group, config.judgement);
    let mut sources = Sources::new(store, kafka, config);
    let (snapshots, mut latest) = tokio::sync::watch::channel(None::<Snapshot>);
    let data = tokio::spawn(async move {
        let start = Instant::now();
        loop {
            let began = tokio::time::Instant::now();
            let reading = sources.read().await;
            let snapshot = tracker.update(reading, start.elapsed());
            if snapshots.send(Some(snapshot)).is_err() {
                return;
            }
            tokio::time::sleep_until(began + refresh).await;
        }
    });

    let screen = Screen::enter();
    let (keys_tx, mut keys) = tokio::sync::mpsc::channel(64);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || read_keys(keys_tx, stop))
    };
    let result = async {
        let mut screen = screen?;
        let mut drawn = Drawn { page: 1, scroll: 0 };
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            screen.0.draw(|frame| {
                let area = frame.area();
                match latest.borrow().as_ref() {
                    Some(s) => drawn = draw(s, &view, area, frame.buffer_mut()),
                    None => frame.render_widget(
                        ratatui::widgets::Paragraph::new(
                            "foodpipe watch: reading the broker and PostgreSQL...",
                        ),
                        area,
                    ),
                }
            })?;
            view.scroll = drawn.scroll;
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                changed = latest.changed() => if changed.is_err() {
                    anyhow::bail!("the refresh task ended");
                },
                input = keys.recv() => match input {
                    Some(Input::Key(key)) => if view.on_key(key, drawn.page) == Action::Quit {
                        return Ok(());
                    },
                    Some(Input::Resize) => {}
                    None => anyhow::bail!("the terminal's input ended"),
                },
            }
        }
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    data.abort();
    // The screen was restored when the block above returned; the reader
    // sees `stop` within one poll.
    drop(keys);
    let _ = reader.join();
    result
}
