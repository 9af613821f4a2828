"""A library that starts a thread as it is imported (a metrics exporter might)."""

import threading

STARTED = threading.Event()
threading.Thread(target=STARTED.wait, name="imported-thread", daemon=True).start()
