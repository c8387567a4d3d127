//! Statements sent together: one round trip for many.
//!
//! tokio-postgres sends a statement the first time its future is polled
//! and reads the answers in order. [`pipelined`] polls every statement's
//! future once, in the order given, before waiting for any answer: the
//! statements leave in that order, in one write, PostgreSQL runs them in
//! that order, and the batch waits for the network once instead of once
//! per statement. A statement that fails aborts the transaction; the ones
//! after it fail with "current transaction is aborted" and a `COMMIT`
//! among them ends the transaction with a rollback.
//!
//! [`Open`] is a transaction begun that way: without tokio-postgres's
//! `Transaction` (whose `BEGIN` is a round trip of its own) to roll back
//! when dropped, it closes the connection instead, unless the transaction
//! was settled (committed or rolled back), so PostgreSQL aborts it and the
//! pool never hands out a connection inside a transaction.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Instant;

use tokio_postgres::Row;

/// One statement of a pipeline: its rows, or its error.
pub(crate) type Step<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a>>;

/// A statement whose answer is its rows.
pub(crate) fn rows<'a>(
    f: impl Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a,
) -> Step<'a> {
    Box::pin(f)
}

/// A statement whose answer is a row count (ignored: what matters is that
/// it ran).
pub(crate) fn done<'a>(
    f: impl Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a,
) -> Step<'a> {
    Box::pin(async move { f.await.map(|_| Vec::new()) })
}

/// `BEGIN`, `COMMIT` or `ROLLBACK`, by the simple query protocol.
pub(crate) fn control<'a>(client: &'a tokio_postgres::Client, sql: &'static str) -> Step<'a> {
    Box::pin(async move { client.batch_execute(sql).await.map(|()| Vec::new()) })
}

/// What one step of a pipeline answered, and when its answer arrived.
pub(crate) struct Answer {
    pub result: Result<Vec<Row>, tokio_postgres::Error>,
    pub at: Instant,
}

/// Sends `steps` in order, all before waiting for any answer, and returns
/// their answers in the same order. Round trips: one.
pub(crate) async fn pipelined(mut steps: Vec<Step<'_>>) -> Vec<Answer> {
    let mut answers: Vec<Option<Answer>> = steps.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut waiting = false;
        // In order, every time: on the first poll this is what sends each
        // statement, so the order here is the order on the wire.
        for (step, answer) in steps.iter_mut().zip(answers.iter_mut()) {
            if answer.is_some() {
                continue;
            }
            match step.as_mut().poll(cx) {
                Poll::Ready(result) => {
                    *answer = Some(Answer {
                        result,
                        at: Instant::now(),
                    });
                }
                Poll::Pending => waiting = true,
            }
        }
        if waiting {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    answers.into_iter().flatten().collect()
}

/// A pooled connection with a transaction open on it. Dropped unsettled
/// (an error, or the batch's future dropped mid-way), the connection is
/// taken out of the pool and closed: PostgreSQL rolls the transaction back
/// when the session ends.
pub(crate) struct Open {
    client: Option<deadpool_postgres::Object>,
    settled: AtomicBool,
}

impl Open {
    pub(crate) fn new(client: deadpool_postgres::Object) -> Self {
        Self {
            client: Some(client),
            settled: AtomicBool::new(false),
        }
    }

    pub(crate) fn client(&self) -> &deadpool_postgres::Object {
        self.client
            .as_ref()
            .expect("the client is only taken on drop")
    }

    /// The transaction ended (committed or rolled back): the connection
    /// can go back to the pool.
    pub(crate) fn settle(&self) {
        self.settled.store(true, Ordering::Relaxed);
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if !self.settled.load(Ordering::Relaxed)
            && let Some(client) = self.client.take()
        {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}
