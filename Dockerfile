# Image for every Airflow service in docker-compose.yaml: the pinned requirements plus the two
# local packages (operators/ for Airflow, include/beam_jobs/ for the Beam jobs).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 AIRFLOW_HOME=/opt/airflow
WORKDIR /opt/airflow
RUN pip install --no-cache-dir uv==0.13.8
COPY requirements.txt .
RUN uv pip install --system --no-cache -r requirements.txt
COPY operators/ /opt/mlbatch/operators/
COPY include/beam_jobs/ /opt/mlbatch/include/beam_jobs/
RUN uv pip install --system --no-cache --no-deps /opt/mlbatch/operators /opt/mlbatch/include/beam_jobs
