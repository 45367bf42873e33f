"""The exit statuses every command shares (the README's table): a script or a scheduler can tell
a bad option from a full disk from an unusable store, whichever command it ran."""

OK = 0
SOME_FAILED = 1  # the command ran; some items (images, store files, requests) failed, each recorded
BAD_INPUT = 2  # an option, path, vocabulary or device the user can fix
DISK_FULL = 3  # the output disk is full (at the start or mid-run); what was finished is kept
STORAGE = 4  # the output folder or the store cannot be used: missing bucket or root, refused
#              credentials, read-only, unreachable
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
TERMINATED = 143  # SIGTERM (128 + SIGTERM): Kubernetes, systemd, Docker, Prefect cancellation
