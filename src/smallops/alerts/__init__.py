"""Alerts: rules over the log that fire and resolve, kept in the database, sent once through an
outbox to PagerDuty, Slack, a signed webhook or email, escalated when nobody acknowledges them.

The closed sets are in smallops.kinds, the [alerts] table of smallops.toml in
smallops.alert_config.

- `model`: what a rule finds, what a channel is sent and what it answered;
- `rules`: each rule's check over the log;
- `engine`: findings into alert state and outbox rows, once, however many processes check;
- `outbox`: sending due notifications with backoff, honouring Retry-After;
- `channels`: one module per kind of channel.

No prompt or output content ever goes into an alert: only figures, names and links.
"""
