"""The local sandbox backend: services as processes on loopback (`backend`), the shared baseline they fork
from (`baseline`), launching and health (`process`), the registry of what runs (`registry`), the log
stamper each service writes through (`stamp`) and what a dry run would start (`plan`)."""
