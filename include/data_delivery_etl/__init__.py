"""The data-delivery ETL (``dags/data_delivery_etl.py``): schemas, landing confinement, load/quarantine logic, its
tables and settings, and its clients (storage paths, through ObjectStoragePath). Imports only
``event_streams.pipelines``."""
