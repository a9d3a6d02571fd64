//! A timer an actor keeps pending for itself: one at a time, replaced when set
//! again, aborted when cancelled or when the actor's state is dropped, so that a
//! stopped actor leaves no task behind (tens of thousands of order actors rest
//! with one each).

use ractor::concurrency::JoinHandle;
use ractor::{ActorRef, Message, MessagingErr};
use std::time::Duration;

pub(crate) struct PendingTimer<M: Message> {
    task: Option<JoinHandle<Result<(), MessagingErr<M>>>>,
}

impl<M: Message> PendingTimer<M> {
    pub(crate) fn new() -> Self {
        Self { task: None }
    }

    /// Sends `message()` to `actor` after `after`, in place of any pending one.
    pub(crate) fn set(
        &mut self,
        actor: &ActorRef<M>,
        after: Duration,
        message: impl FnOnce() -> M + Send + 'static,
    ) {
        self.cancel();
        self.task = Some(actor.send_after(after, message));
    }

    /// Aborts the pending timer, if any.
    pub(crate) fn cancel(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Forgets the timer whose message has just arrived: nothing is left to abort.
    pub(crate) fn fired(&mut self) {
        self.task = None;
    }

    pub(crate) fn is_pending(&self) -> bool {
        self.task.is_some()
    }
}

impl<M: Message> Drop for PendingTimer<M> {
    fn drop(&mut self) {
        self.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::{Actor, ActorProcessingErr};
    use tokio::sync::mpsc;

    /// Forwards every message it gets to the test.
    struct Echo;

    impl Actor for Echo {
        type Msg = &'static str;
        type State = mpsc::UnboundedSender<&'static str>;
        type Arguments = mpsc::UnboundedSender<&'static str>;

        async fn pre_start(
            &self,
            _: ActorRef<Self::Msg>,
            out: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(out)
        }

        async fn handle(
            &self,
            _: ActorRef<Self::Msg>,
            message: Self::Msg,
            out: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            let _ = out.send(message);
            Ok(())
        }
    }

    /// The first message to arrive: a timer due later than the ones under test
    /// marks the point by which they would have fired.
    async fn first_arrival(
        set: impl FnOnce(&ActorRef<&'static str>) -> PendingTimer<&'static str>,
    ) -> &'static str {
        let (out, mut arrivals) = mpsc::unbounded_channel();
        let (echo, _) = Actor::spawn(None, Echo, out).await.expect("spawn");
        let _kept = set(&echo);
        let mut marker = PendingTimer::new();
        marker.set(&echo, Duration::from_millis(100), || "marker");
        let first = arrivals.recv().await.expect("a message");
        echo.stop(None);
        first
    }

    #[tokio::test]
    async fn a_dropped_timer_never_fires() {
        let first = first_arrival(|echo| {
            let mut timer = PendingTimer::new();
            timer.set(echo, Duration::from_millis(10), || "dropped");
            drop(timer);
            PendingTimer::new()
        })
        .await;
        assert_eq!(first, "marker");
    }

    #[tokio::test]
    async fn setting_again_replaces_the_pending_timer() {
        let first = first_arrival(|echo| {
            let mut timer = PendingTimer::new();
            timer.set(echo, Duration::from_millis(10), || "replaced");
            timer.set(echo, Duration::from_millis(20), || "replacement");
            timer
        })
        .await;
        assert_eq!(first, "replacement");
    }
}
