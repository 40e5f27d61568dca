"""What threatens the queue, and who: PostgreSQL's own view of the xmin horizon, dead rows, autovacuum,
connections, the schema's version and the role's grants.

:mod:`.horizon` names who holds back VACUUM (for the doctor, the metrics and
the worker's warning), :mod:`.grants` compares the role's privileges with
``db/sql/grants.sql``, :mod:`.doctor` turns it all into findings, each with a
severity and what to do about it, and :mod:`.watch` is the worker's periodic
check. The queries are in ``queries.sql``; a role without ``pg_monitor``
sees part of them, which the findings say.
"""

from __future__ import annotations
