"""Date formats of the console: ISO-like, 24-hour, and the zone named (a time without its
zone is a guess; the console shows CONSOLE_TIME_ZONE, see ordinaut.middleware)."""

DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i T"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"
