-- geventq schema. Idempotent: every statement may run again on a database
-- that already has it. It names no database: it runs in the configured one.
-- Times are DATETIME(3): pickup latency is measured in milliseconds, and the
-- claim compares against NOW(3), so a task created now is due now.

CREATE TABLE IF NOT EXISTS queue_configs (
  id             INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  queue_name     VARCHAR(100) NOT NULL,
  table_name     VARCHAR(100) NOT NULL,
  server_id      VARCHAR(50)  NOT NULL DEFAULT '',
  max_workers    INT          NOT NULL DEFAULT 10,
  scan_interval  DOUBLE       NOT NULL DEFAULT 5 COMMENT 'seconds, at least 0.05',
  status         TINYINT      NOT NULL DEFAULT 1,
  task_timeout   INT          NOT NULL DEFAULT 0,
  retention_days INT          NOT NULL DEFAULT 0,
  -- Limits across the cluster, 0 = off (README, "Limits across the cluster").
  global_max_workers INT      NOT NULL DEFAULT 0,
  rate_limit     INT          NOT NULL DEFAULT 0,
  rate_period    INT          NOT NULL DEFAULT 60,
  key_max_workers INT         NOT NULL DEFAULT 0,
  created_at     DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
  updated_at     DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
  UNIQUE KEY uk_queue_name (queue_name),
  UNIQUE KEY uk_table_name (table_name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS servers (
  server_id      VARCHAR(50)  NOT NULL PRIMARY KEY,
  host           VARCHAR(255) NOT NULL DEFAULT '',
  pid            INT          NOT NULL DEFAULT 0,
  admin_address  VARCHAR(255) NOT NULL DEFAULT '',
  started_at     DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
  last_heartbeat DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
  state          VARCHAR(20)  NOT NULL DEFAULT 'online',
  queues         TEXT         NULL,
  running        INT          NOT NULL DEFAULT 0,
  version        VARCHAR(20)  NOT NULL DEFAULT '',
  -- host:port of the database node the server uses (database.hosts)
  db_node        VARCHAR(255) NOT NULL DEFAULT ''
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- One row per queue that has a limit or was paused by a handler's
-- RateLimited. Every claim of a limited queue locks its row (FOR UPDATE) and
-- writes it, so those claims take turns across servers (and conflict at
-- COMMIT on a Galera cluster), and a global slot is simply a running row
-- counted under that lock: nothing to drift. held_* say how many due tasks
-- the last claim left pending, by limit.
CREATE TABLE IF NOT EXISTS queue_state (
  queue_name     VARCHAR(100) NOT NULL PRIMARY KEY,
  paused_until   DATETIME(3)  NULL,
  claims         BIGINT UNSIGNED NOT NULL DEFAULT 0,
  held_global    INT          NOT NULL DEFAULT 0,
  held_rate      INT          NOT NULL DEFAULT 0,
  held_key       INT          NOT NULL DEFAULT 0,
  held_paused    INT          NOT NULL DEFAULT 0,
  held_at        DATETIME(3)  NULL,
  updated_at     DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Task starts of rate-limited queues, counted per slice of the window
-- (rate_period / 60), written in the claim's transaction under the queue's
-- lock. A slice that reaches into the window counts whole, so the count never
-- falls short: at most rate_limit starts in any rate_period.
CREATE TABLE IF NOT EXISTS queue_rate_window (
  queue_name     VARCHAR(100) NOT NULL,
  slice_end      DATETIME(3)  NOT NULL,
  slice_start    DATETIME(3)  NOT NULL,
  starts         INT          NOT NULL DEFAULT 0,
  PRIMARY KEY (queue_name, slice_end)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Requests to cancel a running attempt, read by its owner (within a second)
-- and by the rescue, which cancels instead of requeueing when the owner died.
CREATE TABLE IF NOT EXISTS task_cancels (
  table_name     VARCHAR(100) NOT NULL,
  task_id        BIGINT UNSIGNED NOT NULL,
  retry_count    INT          NOT NULL,
  server_id      VARCHAR(50)  NOT NULL,
  requested_at   DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
  PRIMARY KEY (table_name, task_id),
  KEY idx_server (server_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Named locks between servers (retention, queue changes): a row per name,
-- taken for a while by one holder in a short transaction that writes the
-- row, so that two servers on different Galera nodes conflict at COMMIT
-- (GET_LOCK is local to one node and serializes nothing across a cluster).
CREATE TABLE IF NOT EXISTS named_locks (
  name           VARCHAR(64)  NOT NULL PRIMARY KEY,
  holder         VARCHAR(64)  NOT NULL DEFAULT '',
  expires_at     DATETIME(3)  NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Recurring tasks. A schedule fires by cron (5 fields read in `timezone`, or
-- an alias such as @hourly) or at a fixed rate (interval_seconds); exactly one
-- of the two is set. next_fire_at and last_fire_at are UTC. Added by SQL
-- with next_fire_at NULL, a schedule is started by any server within a second.
CREATE TABLE IF NOT EXISTS schedules (
  id                    INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  name                  VARCHAR(100) NOT NULL,
  queue_name            VARCHAR(100) NOT NULL,
  task_type             VARCHAR(50)  NOT NULL,
  task_params           MEDIUMTEXT   NULL COMMENT 'a JSON object, or NULL',
  max_retries           INT          NOT NULL DEFAULT 3,
  cron                  VARCHAR(100) NULL,
  interval_seconds      INT          NULL,
  timezone              VARCHAR(64)  NOT NULL DEFAULT 'UTC',
  misfire_policy        ENUM('skip', 'once', 'all') NOT NULL DEFAULT 'once',
  misfire_grace_seconds INT          NOT NULL DEFAULT 60,
  max_catchup           INT          NOT NULL DEFAULT 100,
  overlap               ENUM('allow', 'skip') NOT NULL DEFAULT 'allow',
  status                TINYINT      NOT NULL DEFAULT 1 COMMENT '1 enabled, 0 paused',
  next_fire_at          DATETIME(3)  NULL COMMENT 'UTC',
  last_fire_at          DATETIME(3)  NULL COMMENT 'UTC',
  last_task_id          BIGINT UNSIGNED NULL,
  created_at            DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
  updated_at            DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
  UNIQUE KEY uk_schedule_name (name),
  KEY idx_status_next_fire (status, next_fire_at),
  CONSTRAINT chk_schedule_cadence CHECK ((cron IS NULL) <> (interval_seconds IS NULL)),
  CONSTRAINT chk_schedule_interval CHECK (interval_seconds IS NULL OR interval_seconds >= 1)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- The ledger of fires: its primary key makes each (schedule, fire time)
-- happen once, whoever fires it and whatever next_fire_at says; its rows are
-- the schedule's history. fire_at is UTC; a manual run is recorded at the
-- moment it was asked for.
CREATE TABLE IF NOT EXISTS schedule_fires (
  schedule_id  INT UNSIGNED NOT NULL,
  fire_at      DATETIME(3)  NOT NULL COMMENT 'UTC',
  task_table   VARCHAR(100) NOT NULL,
  task_id      BIGINT UNSIGNED NULL,
  outcome      ENUM('enqueued', 'skipped_overlap', 'missed') NOT NULL,
  created_at   DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
  PRIMARY KEY (schedule_id, fire_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Outcomes per task table and minute (database clock), written in the same
-- transaction as the rows they count, so the operator's view never counts
-- finished rows: totals are the sum of a table's rows here, the throughput
-- chart its recent minutes. `writer` is the server that wrote them ('' for
-- the admin and the rescue), so servers never wait on each other's counter
-- row. Housekeeping folds minutes older than a day into minute
-- 1000-01-01 (the totals before that). Outcomes only: a retry or retention
-- never lowers them.
CREATE TABLE IF NOT EXISTS queue_minute_counts (
  table_name     VARCHAR(100) NOT NULL,
  minute         DATETIME     NOT NULL,
  writer         VARCHAR(50)  NOT NULL DEFAULT '',
  done           BIGINT UNSIGNED NOT NULL DEFAULT 0,
  failed         BIGINT UNSIGNED NOT NULL DEFAULT 0,
  cancelled      BIGINT UNSIGNED NOT NULL DEFAULT 0,
  PRIMARY KEY (table_name, minute, writer)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- The base columns every task table has. A table made by hand with these
-- columns (DATETIME without fractions works too) can be registered as a queue.
CREATE TABLE IF NOT EXISTS email_tasks (
  id            BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  task_type     VARCHAR(50)  NOT NULL,
  task_params   MEDIUMTEXT   NULL,
  status        TINYINT      NOT NULL DEFAULT 0 COMMENT '0 pending, 1 running, 2 done, 3 failed, 4 cancelled',
  schedule_time DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
  start_time    DATETIME(3)  NULL,
  end_time      DATETIME(3)  NULL,
  retry_count   INT          NOT NULL DEFAULT 0,
  max_retries   INT          NOT NULL DEFAULT 3,
  error_msg     TEXT         NULL,
  server_id     VARCHAR(50)  NOT NULL DEFAULT '',
  created_at    DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
  updated_at    DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
  KEY idx_status_schedule (status, schedule_time)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS data_sync_tasks LIKE email_tasks;
CREATE TABLE IF NOT EXISTS report_tasks LIKE email_tasks;

INSERT IGNORE INTO queue_configs (queue_name, table_name, server_id, max_workers, scan_interval, status)
VALUES ('email_queue', 'email_tasks', '', 10, 5, 1),
       ('data_sync_queue', 'data_sync_tasks', '', 5, 5, 1),
       ('report_queue', 'report_tasks', '', 2, 5, 1);

-- A few due sample tasks, inserted only into an empty table so that applying
-- this file twice does not duplicate them. The sample e-mails are dry runs:
-- they render the message into the job log instead of needing an SMTP server.
INSERT INTO email_tasks (task_type, task_params)
SELECT 'email', '{"to": ["alice@example.com"], "subject": "Welcome to geventq", "content": "Hello Alice!", "type": "text", "dry_run": true}'
FROM DUAL WHERE NOT EXISTS (SELECT 1 FROM email_tasks);
INSERT INTO email_tasks (task_type, task_params)
SELECT 'email', '{"to": ["bob@example.com"], "subject": "Your weekly digest", "content": "<h1>Digest</h1><p>All quiet.</p>", "type": "html", "dry_run": true}'
FROM DUAL WHERE (SELECT COUNT(*) FROM email_tasks) = 1;

INSERT INTO data_sync_tasks (task_type, task_params)
SELECT 'data_sync', '{"table_name": "queue_configs", "target_db": "geventq_sync_demo", "sync_type": "full", "batch_size": 500}'
FROM DUAL WHERE NOT EXISTS (SELECT 1 FROM data_sync_tasks);

INSERT INTO report_tasks (task_type, task_params)
SELECT 'report', '{"title": "daily"}'
FROM DUAL WHERE NOT EXISTS (SELECT 1 FROM report_tasks);

-- A sample schedule: a report every hour, paused until someone resumes it.
INSERT IGNORE INTO schedules (name, queue_name, task_type, task_params, cron, timezone, status)
VALUES ('hourly_report', 'report_queue', 'report', '{"title": "hourly"}', '@hourly', 'UTC', 0);
