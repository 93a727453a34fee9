//! Tasks that belong to something. An [`OwnedTask`] is aborted when it is
//! dropped, so a task kept in an actor's state ends with the actor however
//! the actor ends: stopped, failed, or killed (a killed actor runs no
//! `post_stop`, but its state is still dropped).

use tokio::task::JoinHandle;

/// A spawned task that ends when its owner drops it.
#[derive(Debug)]
pub struct OwnedTask(JoinHandle<()>);

impl OwnedTask {
    pub fn spawn<F>(future: F) -> OwnedTask
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        OwnedTask(tokio::spawn(future))
    }

    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl Drop for OwnedTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_dropped_task_stops() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let task = OwnedTask::spawn(async move {
            let _tx = tx;
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        drop(task);
        // The sender is dropped with the aborted task, closing the channel.
        assert!(tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("the task ended").is_none());
    }
}
