"""Running one claimed attempt through its handler: the job log's first and
last lines, the queue's task timeout, what a failure means (retry with
backoff, or failed for good), and handing the outcome to the recorder and
the listeners. The queue's pool greenlet calls `run`; nothing here claims."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gevent
import ujson
from loguru import logger

from geventq.attempts import DONE, Attempt, CancelFlag, ClaimedAttempts, Listeners, Outcome
from geventq.config import Config
from geventq.db import Database
from geventq.errors import LeaseLost, PermanentFailure, RateLimited, TaskCancelled
from geventq.handlers import SCHEDULE_KEY, JobContext
from geventq.logs import JobLogs
from geventq.outcomes import OutcomeRecorder
from geventq.producer import Producer


def backoff_seconds(retry_count: int, base: float, cap: float) -> float:
    """Delay before retry number retry_count + 1: base * 2^retry_count, capped."""
    return min(base * (2 ** min(retry_count, 32)), cap)


class AttemptRunner:
    def __init__(
        self,
        *,
        handlers: Mapping[str, Callable[[JobContext], Any]],
        job_logs: JobLogs,
        recorder: OutcomeRecorder,
        claimed: ClaimedAttempts,
        listeners: Listeners,
        server_id: str,
        config: Config,
        handler_db: Database,
        producer: Producer,
    ):
        self.handlers = handlers
        self.job_logs = job_logs
        self.recorder = recorder
        self.claimed = claimed
        self.listeners = listeners
        self.server_id = server_id
        self.config = config  # handed to handlers as ctx.config
        self.handler_db = handler_db  # handed to handlers as ctx.db
        self.producer = producer  # ctx.enqueue, on handler_db
        self.backoff_base = config.queue.retry_backoff_base
        self.backoff_max = config.queue.retry_backoff_max

    def run(self, attempt: Attempt, task_timeout: float) -> Outcome:
        """Run the handler and record the outcome. A lapsed lease or a
        shutdown stops the handler with an exception that goes on up: then
        nothing is recorded here."""
        log_id, job_logs = attempt.log_id, self.job_logs
        cancel_flag = self.claimed.handler_started(attempt, gevent.getcurrent())
        try:
            job_logs.begin(
                log_id,
                f"start {attempt.task_type} attempt {attempt.retry_count + 1}"
                f"/{attempt.max_retries + 1} on {self.server_id} (queue {attempt.queue_name})",
            )
            outcome = self._execute(attempt, task_timeout, cancel_flag)
            self.claimed.handler_ended(attempt)  # no switch since the handler returned: it stands
        except TaskCancelled:
            self.claimed.handler_ended(attempt)
            outcome = Outcome.cancelled(f"cancelled by request while running on {self.server_id}")
            job_logs.line(log_id, "WARNING", f"{outcome.error}; it will not run again")
        except LeaseLost:
            job_logs.line(
                log_id,
                "WARNING",
                "stopped: this server's heartbeat lease lapsed; another server may run this task again",
            )
            self.claimed.drop(attempt)
            raise
        except BaseException:
            # Shutdown killed the handler: the executor hands the task back.
            self.claimed.handler_ended(attempt)
            job_logs.line(log_id, "WARNING", "stopped by shutdown; returned to pending")
            raise
        finally:
            job_logs.end(log_id)
        self.recorder.record(attempt, outcome)
        self.listeners.finished(attempt, outcome, attempt.seconds_running())
        return outcome

    def _execute(self, attempt: Attempt, task_timeout: float, cancel_flag: CancelFlag) -> Outcome:
        """Run the handler; the outcome to record (always writes the last job log line)."""
        timeout = gevent.Timeout(task_timeout) if task_timeout > 0 else None
        try:
            if timeout is not None:
                timeout.start()
            self._call_handler(attempt, cancel_flag)
        except gevent.Timeout as fired:
            if fired is not timeout:
                raise
            return self._failure(attempt, f"timed out after {task_timeout:g}s", timed_out=True)
        except PermanentFailure as error:
            return self._failure(attempt, f"PermanentFailure: {error}", permanent=True)
        except RateLimited as limited:
            return self._rate_limited(attempt, limited)
        except Exception as error:  # noqa: BLE001 - a handler's failure is data, never fatal
            return self._failure(attempt, f"{type(error).__name__}: {error}")
        finally:
            if timeout is not None:
                timeout.close()
        self.job_logs.line(attempt.log_id, "INFO", f"done in {attempt.seconds_running():.3f}s")
        return DONE

    def _call_handler(self, attempt: Attempt, cancel_flag: CancelFlag) -> None:
        handler = self.handlers.get(attempt.task_type)
        if handler is None:
            raise PermanentFailure(f"no handler for task type {attempt.task_type!r} on {self.server_id}")
        raw = attempt.task_params
        try:
            params = ujson.loads(raw) if raw else {}
        except ValueError as error:
            raise PermanentFailure(f"task_params is not valid JSON: {error}") from None
        schedule = params.get(SCHEDULE_KEY) if isinstance(params, dict) else None
        handler(
            JobContext(
                task_id=attempt.id,
                task_type=attempt.task_type,
                params=params,
                job_param=raw,
                queue_name=attempt.queue_name,
                table_name=attempt.table_name,
                retry_count=attempt.retry_count,
                max_retries=attempt.max_retries,
                schedule_time=attempt.schedule_time,
                created_at=attempt.created_at,
                server_id=self.server_id,
                started_at=attempt.claimed_at,
                cancel_check=cancel_flag,
                log_id=attempt.log_id,
                log=logger.bind(log_id=attempt.log_id),
                config=self.config,
                db=self.handler_db,
                schedule=schedule if isinstance(schedule, dict) else None,
                producer=self.producer,
            )
        )

    def _rate_limited(self, attempt: Attempt, limited: RateLimited) -> Outcome:
        message = f"RateLimited: {limited} (not counted as an attempt; queue {attempt.queue_name} paused)"
        self.job_logs.line(attempt.log_id, "WARNING", message)
        logger.info("task {}: {}", attempt.log_id, message)
        return Outcome.rate_limited(message[:4000], limited.seconds)

    def _failure(
        self, attempt: Attempt, error: str, *, permanent: bool = False, timed_out: bool = False
    ) -> Outcome:
        error = error[:4000]
        if permanent or attempt.retry_count >= attempt.max_retries:
            outcome = Outcome.failed(error, timed_out=timed_out)
            verdict = "failed for good"
        else:
            delay = backoff_seconds(attempt.retry_count, self.backoff_base, self.backoff_max)
            outcome = Outcome.retry(error, delay, timed_out=timed_out)
            verdict = f"will retry in {delay:g}s"
        self.job_logs.line(attempt.log_id, "ERROR", f"{error} ({verdict})")
        logger.warning("task {} attempt {} {}: {}", attempt.log_id, attempt.retry_count + 1, verdict, error)
        return outcome
