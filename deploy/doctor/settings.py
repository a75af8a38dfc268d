"""Where the doctor looks: the variables `make run` writes to `.state/stack.env`."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.settings import KafkaSecuritySettings


class DoctorSettings(KafkaSecuritySettings):
    """Read from the environment first, then from `.state/stack.env` when it exists."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    streamjobs_url: str = "http://127.0.0.1:8080"
    streamjobs_ws_url: str = "ws://127.0.0.1:8082/ws"
    streamjobs_token: SecretStr = SecretStr("")
    results_url: str = "http://127.0.0.1:8081"
    streamer_port: int = Field(default=8083, ge=1, le=65535)
    streamer_url: str = Field(default="", description="defaults to 127.0.0.1:STREAMER_PORT")
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = "streamjobs"
    database_url: str = Field(default="", description="empty: PostgreSQL is not checked")
    openai_base_url: str = "http://127.0.0.1:8090/v1"
    openai_api_key: SecretStr = SecretStr("sim")

    def service_urls(self) -> dict[str, str]:
        """The ops base URL of each service (the notifier's is its WebSocket port)."""
        ws = urlsplit(self.streamjobs_ws_url)
        scheme = "https" if ws.scheme == "wss" else "http"
        return {
            "gateway": self.streamjobs_url.rstrip("/"),
            "results": self.results_url.rstrip("/"),
            "notifier": f"{scheme}://{ws.netloc}",
            "streamer": (self.streamer_url or f"http://127.0.0.1:{self.streamer_port}").rstrip("/"),
        }
