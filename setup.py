"""Batch image captioning for data lakes: Xception + merge LSTM captions, Apache Beam, Parquet."""

from setuptools import find_packages, setup

setup(
    name="batch-image-captioning",
    version="0.1.0",
    description="Caption millions of stored images to Parquet with Apache Beam (Xception + merge CNN-LSTM).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.13",
    packages=find_packages(
        include=[
            "model",
            "model.*",
            "training",
            "training.*",
            "beam_pipeline",
            "beam_pipeline.*",
            "caption_report",
            "caption_report.*",
            "caption_index",
            "caption_index.*",
            "models",
            "models.*",
        ]
    ),
    py_modules=["run_pipeline"],
    # The shipped default model travels with the package (sdist and wheel), so a cloud runner's
    # workers get it through --setup_file.
    package_data={
        "models": ["*/*.json", "*/*.h5", "*/*.png", "*/*.xml", "*/*.bin"],
        "caption_report": ["static/*.css", "static/*.js"],
    },  # the report's inline CSS / JS
    include_package_data=True,
    install_requires=[
        "apache-beam>=2.60,<3",
        "tensorflow>=2.16,<2.22",  # the CPU wheel is enough; GPUs are used when present
        "keras>=3.3,<4",
        "openvino>=2025.0,<2027",  # runs the encoder on CPUs (faster than TensorFlow there)
        "numpy>=1.26,<3",
        "pillow>=10.1,<13",
        "pyarrow>=14",
        "nltk>=3.8,<4",
        "fsspec>=2024.2",
        "gensim>=4.3,<5",  # Word2Vec embeddings for training
        "matplotlib>=3.8,<4",  # training curves
        "tqdm>=4.66",
    ],
    extras_require={
        "gcp": ["apache-beam[gcp]>=2.60,<3", "gcsfs>=2024.2"],
        "aws": ["apache-beam[aws]>=2.60,<3", "s3fs>=2024.2"],
        # NNCF builds the INT8 encoder (training.quantize); running one needs only openvino.
        "int8": ["nncf>=2.14,<4"],
        # --runner DaskRunner: beam_pipeline/dask_runner.py subclasses Beam's Dask runner internals and
        # refuses a Beam outside the range it was tested with (runners.DASK_TESTED_BEAM; the lock pins one).
        "dask": ["apache-beam[dask]>=2.60,<3", "distributed>=2024.8"],
        # --search_index and python -m caption_index: LanceDB (embedded BM25 full-text + vector index).
        "search": ["lancedb>=0.25,<1"],
        # Iceberg tables (--iceberg_table): the SQL catalog on SQLite and the pyarrow writer; other
        # catalogs add their own pyiceberg extra (glue, hive, ...); REST needs none.
        "iceberg": ["pyiceberg[sql-sqlite,pyarrow,pyiceberg-core]>=0.9,<1"],
        # s3fs / aiobotocore lower bounds: without them pip's resolver backtracks through old
        # aiobotocore/boto3 releases for more than 12 minutes on this extra (measured); with them, 15 s.
        "test": [
            "pytest>=8",
            "moto[server]>=5",
            "apache-beam[aws]>=2.60,<3",
            "s3fs>=2026.9",
            "aiobotocore>=3.10",
            "psutil>=5.9",
            "nncf>=2.14,<4",
            "apache-beam[dask]>=2.60,<3",
            "distributed>=2024.8",
            "pyiceberg[sql-sqlite,pyarrow,pyiceberg-core]>=0.9,<1",
            "pycocoevalcap>=1.2",
            "apache-beam[gcp]>=2.60,<3",  # the offline Dataflow job-graph test
            "lancedb>=0.25,<1",
            "ruff>=0.15",
        ],  # pycocoevalcap: the reference CIDEr-D / ROUGE-L are tested against
    },
    entry_points={
        "console_scripts": [
            "caption-images=run_pipeline:main",
            "caption-train=training.train:main",
            "caption-evaluate=training.evaluate:main",
            "caption-report=caption_report.cli:main",
            "caption-index=caption_index.cli:main",
        ],
    },
)
