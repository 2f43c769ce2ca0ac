# Image for every Airflow service in docker-compose.yaml: the pinned requirements plus the two
# local packages (operators/ for Airflow, include/beam_jobs/ for the Beam jobs).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 AIRFLOW_HOME=/opt/airflow
# uv compiles no bytecode by default: without .pyc files in the image, every task and Beam job process
# of a fresh container compiles Airflow, MLflow and Beam from source (about twice the import CPU).
ENV UV_COMPILE_BYTECODE=1
WORKDIR /opt/airflow
RUN pip install --no-cache-dir uv==0.13.8
COPY requirements.txt .
RUN uv pip install --system --no-cache -r requirements.txt
COPY operators/ /opt/mlbatch/operators/
COPY include/beam_jobs/ /opt/mlbatch/include/beam_jobs/
# Both packages are installed non-editably, so no setup.py sits next to mlbatch_beam: Dataflow jobs
# launched from this image stage the job package's sdist, built here, with --extra_package
# (mlbatch.backends.dataflow_options.beam_jobs_staging_args reads $MLBATCH_BEAM_PACKAGE). Workers
# pip-install it with its pinned worker-requirements.txt. tests/test_image_dataflow_staging.py does
# the same build and install in a fresh venv and checks Beam's staging list.
RUN uv build --sdist --out-dir /opt/mlbatch/dist /opt/mlbatch/include/beam_jobs \
 && uv pip install --system --no-cache --no-deps /opt/mlbatch/operators /opt/mlbatch/include/beam_jobs
ENV MLBATCH_BEAM_PACKAGE=/opt/mlbatch/dist
