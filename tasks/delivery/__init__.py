"""Getting lifecycle events out: the transactional outbox, webhooks, and Redis streams.

`outbox` is written in the same transaction as the change it announces and relayed to the
Redis Stream; `webhooks` turns run outcomes into signed POSTs with retries; `streams` reads
the inbound event stream. All three run inside `runscheduler`'s housekeeping.
"""
