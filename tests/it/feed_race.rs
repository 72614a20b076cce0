//! The change feed under racing commits. Writers on three stores (three instances' pools on
//! one database) record changes concurrently, a third of them holding their transaction open
//! for a while so that later ones commit first; each store runs its own sequencer, as each
//! instance does. A reader tails the feed with cursors, as a consumer would, and must see every
//! change exactly once, seqs without gaps, and each writer's changes in the order it committed
//! them. On PostgreSQL the test also checks that the race it guards against really happened:
//! rows whose insertion id is lower than that of a row sequenced before them (what a naive
//! `id > cursor` reader would have skipped for ever).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use appdata_syncd::services::feed::ChangeFeed;
use appdata_syncd::store::changes::{self, ChangeKind, NewChange};
use appdata_syncd::store::{self, Store};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::helpers::{on_postgres, postgres_or_skip, test_dir};

const WRITERS: usize = 12;
const PER_WRITER: usize = 50;

async fn stores(url: &str, n: usize) -> Vec<Store> {
    let mut out = Vec::new();
    for _ in 0..n {
        let s = Store::connect(url, 8).await.unwrap();
        s.migrate().await.unwrap();
        out.push(s);
    }
    out
}

/// One writer: `PER_WRITER` transactions, each recording one change; some linger open.
async fn writer(store: Store, w: usize) {
    let sub = format!("w{w:02}");
    for i in 0..PER_WRITER {
        let mut tx = store.begin_write().await.unwrap();
        let id = format!("{i:03}");
        let change = NewChange::file(ChangeKind::FileAdded, &sub, &id);
        changes::record(tx.conn(), &change, store::now_ms())
            .await
            .unwrap();
        if (w + i).is_multiple_of(3) {
            let hold = rand::thread_rng().gen_range(1..15);
            tokio::time::sleep(Duration::from_millis(hold)).await;
        }
        tx.commit().await.unwrap();
    }
}

/// Tails the feed from the start until `total` changes came; returns them in feed order.
async fn tail(store: &Store, total: usize) -> Vec<changes::Change> {
    let mut seen = Vec::new();
    let mut cursor = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < total {
        assert!(
            Instant::now() < deadline,
            "only {} of {total} changes came",
            seen.len()
        );
        let mut conn = store.pool().acquire().await.unwrap();
        let page = changes::after(&mut conn, cursor, 37).await.unwrap();
        drop(conn);
        match page.last() {
            Some(last) => cursor = last.seq,
            None => tokio::time::sleep(Duration::from_millis(3)).await,
        }
        seen.extend(page);
    }
    seen
}

async fn race(url: &str) {
    let stores = stores(url, 3).await;
    let stop = CancellationToken::new();
    let mut sequencers = Vec::new();
    for s in &stores {
        let (feed, stop) = (ChangeFeed::new(s.clone()), stop.clone());
        sequencers.push(tokio::spawn(async move { feed.run_sequencer(stop).await }));
    }
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(stores[w % 3].clone(), w)))
        .collect();
    let total = WRITERS * PER_WRITER;
    let seen = tail(&stores[0], total).await;
    for w in writers {
        w.await.unwrap();
    }
    // Nothing more arrives after everything was seen.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut conn = stores[1].pool().acquire().await.unwrap();
    let last = seen.last().unwrap().seq;
    assert!(changes::after(&mut conn, last, 10)
        .await
        .unwrap()
        .is_empty());
    stop.cancel();
    for s in sequencers {
        s.await.unwrap().unwrap();
    }

    assert_eq!(seen.len(), total);
    let seqs: Vec<i64> = seen.iter().map(|c| c.seq).collect();
    assert_eq!(
        seqs,
        (1..=total as i64).collect::<Vec<_>>(),
        "seqs 1..N, no gap, no repeat"
    );
    let unique: HashSet<(String, String)> = seen
        .iter()
        .map(|c| (c.sub.clone(), c.file_id.clone().unwrap()))
        .collect();
    assert_eq!(unique.len(), total, "every change exactly once");
    for w in 0..WRITERS {
        let sub = format!("w{w:02}");
        let order: Vec<String> = seen
            .iter()
            .filter(|c| c.sub == sub)
            .map(|c| c.file_id.clone().unwrap())
            .collect();
        let committed: Vec<String> = (0..PER_WRITER).map(|i| format!("{i:03}")).collect();
        assert_eq!(order, committed, "{sub}'s changes in its commit order");
    }
    if on_postgres_url(url) {
        let late = late_commits(&stores[0]).await;
        eprintln!(
            "{late} of {total} changes committed after a change inserted later was sequenced"
        );
        assert!(late > 0, "the race did not happen: the test proves nothing");
    }
    for s in stores {
        s.close().await;
    }
}

fn on_postgres_url(url: &str) -> bool {
    url.starts_with("postgres")
}

/// How many changes were sequenced after a change with a higher insertion id: the rows an
/// `id > cursor` reader could have skipped.
async fn late_commits(store: &Store) -> usize {
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM changes ORDER BY seq")
        .fetch_all(store.pool())
        .await
        .unwrap();
    let mut highest = i64::MIN;
    let mut late = 0;
    for id in ids {
        if id < highest {
            late += 1;
        }
        highest = highest.max(id);
    }
    late
}

/// On the suite's backend: SQLite files (three pools on one file), or PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_commits_reach_the_feed_once_each_in_commit_order() {
    let dir = test_dir();
    let url = match on_postgres() {
        true => postgres_or_skip(dir.path()).unwrap(),
        false => format!("sqlite://{}", dir.path().join("race.db").display()),
    };
    race(&url).await;
}

/// Always on PostgreSQL (unless APPDATA_SYNCD_SKIP_POSTGRES=1): three instances committing
/// concurrently, where sequences are drawn before commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_on_postgres_never_skip_a_late_commit() {
    let dir = test_dir();
    let Some(url) = postgres_or_skip(dir.path()) else {
        return;
    };
    race(&url).await;
}
