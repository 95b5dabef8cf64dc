"""pg_jax: fine-tune PaliGemma 1 and 2 on DocVQA with JAX/Flax."""

import setuptools

# Minimum versions are the ones CI tests: requirements/kaggle-gpu-image.txt pins
# Kaggle's GPU image (jax 0.7.2, flax 0.11.2, optax 0.2.8, TensorFlow 2.20) and the
# numpy, ml_dtypes and orbax-checkpoint releases that go with it. safetensors 0.4.1 is
# the first whose numpy API reads and writes ml_dtypes bfloat16 (0.4.0 cannot; checked).
INSTALL_REQUIRES = [
    "jax>=0.7.2",
    "flax>=0.11.2",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.11.26",
    "numpy>=2.0.2",
    "ml_dtypes>=0.5.1",
    "ml_collections>=0.1.1",
    "sentencepiece>=0.2.0",
    "absl-py>=2.0",
    "tqdm>=4.66",
    "pillow>=10.0",
    "pyarrow>=15.0",
    "safetensors>=0.4.1",
    "matplotlib>=3.8",
]

# The input pipeline (tf.data) is the only part that needs TensorFlow; the model,
# train step, decoding and benchmarks import without it.
DATA_REQUIRES = [
    "tensorflow-cpu>=2.20; platform_machine=='x86_64'",
    "tensorflow>=2.20; platform_machine!='x86_64'",
    "tensorflow-datasets>=4.9.6",
]

# Hugging Face transformers is the numerical oracle in the tests. Install CPU
# torch first (`pip install torch==2.13.0` takes a local CPU wheel in CI).
TEST_REQUIRES = [
    "pytest>=8.0",
    # Two test processes: CI's 2-core machine runs the suite in about 0.6 of the time.
    "pytest-xdist>=3.5",
    "torch>=2.4",
    "transformers>=4.57",
    "protobuf>=4.25",
    # tests/test_lora_peft.py: PEFT adapters both ways (0.21.2 tested).
    "peft>=0.21",
    # tests/test_notebook.py executes notebooks/docvqa.ipynb in a Jupyter kernel.
    "nbclient>=0.10",
    "nbformat>=5.10",
    "ipykernel>=6.29",
]

setuptools.setup(
    name="pg_jax",
    version="0.1.0",
    description="Fine-tune PaliGemma 1 and 2 on document VQA with JAX/Flax.",
    packages=setuptools.find_packages(include=["pg_jax", "pg_jax.*"]),
    package_data={"pg_jax": ["assets/*.model", "assets/*.npz"]},
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES + DATA_REQUIRES,
    extras_require={"test": TEST_REQUIRES, "gpu": ["jax[cuda12]>=0.7.2"]},
)
