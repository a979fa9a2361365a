"""Importing a CSV file: upload, preview, progress and import (service.imports)."""

from __future__ import annotations

from flask import abort, flash, g, redirect, render_template, request, session, url_for

from ... import importer, imports
from ...models import Import, ImportStatus
from ...services import worker_name
from .. import MAX_ID, now, services
from .blueprint import bp, logger


def _import_runner(worker: str) -> imports.ImportRunner:
    return imports.ImportRunner(
        services().database,
        worker=worker,
        default_time_zone=services().settings.DEFAULT_TIME_ZONE,
        clock=services().clock,
    )


def _import_or_404(import_id: int) -> Import:
    with services().database.read() as db:
        job = db.get(Import, import_id)
        if job is None:
            abort(404, description="No such import.")
        db.expunge(job)
    return job


def _import_page(job: Import | None, *, error: str | None = None, status: int = 200):
    return render_template(
        "admin/import.html", job=job, error=error, shown=importer.MAX_ISSUES_SHOWN
    ), status


@bp.errorhandler(413)
def too_large(_error):
    limit = importer.MAX_IMPORT_BYTES // 1_000_000
    return _import_page(
        None,
        error=f"The file is larger than {limit} MB. Split it and import the parts.",
        status=413,
    )


@bp.route("/subscribers/import", methods=["GET", "POST"])
def import_upload():
    """Upload a CSV file and see what importing it would do; nothing is imported yet. A
    small file is checked here and now; a large one by the scheduler, with progress."""
    if request.method == "GET":
        return _import_page(None)
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        return _import_page(None, error="Choose a CSV file.", status=422)
    worker = worker_name()
    try:
        with services().database.begin() as db:
            previous = session.get("import_id")
            if isinstance(previous, int):  # one preview waiting per browser
                imports.cancel(db, previous, now=now(), previews_only=True)
            job = imports.store_upload(
                db,
                upload.stream,
                filename=upload.filename,
                created_by=g.admin.email,
                claimed_by=worker,
                now=now(),
            )
            inline = job.size_bytes <= imports.INLINE_BYTES
            if not inline:
                job.claimed_by = job.lease_until = None  # for the scheduler
            import_id = job.id
    except importer.ImportProblem as exc:
        return _import_page(None, error=str(exc), status=413)
    session["import_id"] = import_id
    logger.info("import %d uploaded by %s (%s)", import_id, g.admin.email, upload.filename)
    if not inline:
        return redirect(url_for("admin.import_page", import_id=import_id), 303)
    _import_runner(worker).run(import_id)
    job = _import_or_404(import_id)
    if job.status is ImportStatus.FAILED:
        return _import_page(None, error=job.error, status=422)
    if request.headers.get("X-Requested-With") == "XMLHttpRequest":
        # The page's upload script follows this to the preview's own address.
        return redirect(url_for("admin.import_page", import_id=import_id), 303)
    return _import_page(job)


@bp.get("/imports/<int:import_id>")
def import_page(import_id: int):
    """An import's preview, or how far checking or importing it has got."""
    return _import_page(_import_or_404(import_id))


@bp.post("/subscribers/import/apply")
def import_apply():
    """Import the file previewed: a small one here and now, a large one by the scheduler.
    Each batch of rows is imported whole or not at all, and none twice."""
    import_id = request.form.get("import_id", type=int) or session.get("import_id")
    if not isinstance(import_id, int) or not 0 < import_id <= MAX_ID:
        import_id = None
    try:
        mode = importer.Mode(request.form.get("mode", ""))
    except ValueError:
        mode = None
    worker = worker_name()
    try:
        with services().database.begin() as db:
            job = db.get(Import, import_id) if import_id is not None else None
            if job is None or job.status is not ImportStatus.CHECKED:
                job = None
            elif mode is None:
                abort(
                    400,
                    description="Choose whether they are confirmed or get a confirmation email.",
                )
            else:
                job = imports.start_import(
                    db,
                    import_id,
                    mode=mode,
                    consent_text=request.form.get("consent", ""),
                    join_sequence=request.form.get("join_sequence") == "yes",
                    sequence=services().default_sequence.name,
                    claimed_by=worker,
                    now=now(),
                    tags_for_all=importer.TAG_SEPARATORS.split(request.form.get("tags", "")),
                )
                inline = job is not None and job.size_bytes <= imports.INLINE_BYTES
                if job is not None and not inline:
                    job.claimed_by = job.lease_until = None  # for the scheduler
    except importer.ImportProblem as exc:
        flash(f"Nothing was imported: {exc}")
        return redirect(url_for("admin.import_page", import_id=import_id), 303)
    if job is None:
        flash("That import is gone (already done, or another file was uploaded since).")
        return redirect(url_for("admin.import_upload"), 303)
    session.pop("import_id", None)
    logger.info("import %d started by %s", import_id, g.admin.email)
    if not inline:
        return redirect(url_for("admin.import_page", import_id=import_id), 303)
    _import_runner(worker).run(import_id)
    done = _import_or_404(import_id).applied
    flash(
        f"Imported {done.get('created', 0)} new subscribers ({done.get('confirmations_queued', 0)}"
        f" asked to confirm, {done.get('enrolled', 0)} started the sequence); "
        f"{done.get('updated', 0)} updated; {done.get('tagged', 0)} already on the list "
        "given new tags."
    )
    return redirect(url_for("admin.subscribers"), 303)


@bp.get("/imports/<int:import_id>/cancel/confirm")
def import_cancel_confirm(import_id: int):
    """What cancelling the import throws away, and the button that does it."""
    job = _import_or_404(import_id)
    if job.status in imports.ENDED:
        return redirect(url_for("admin.import_page", import_id=import_id), 303)
    consequences = [
        f"Nothing more of {job.filename} is checked or imported, and the file is deleted."
    ]
    if job.status is ImportStatus.IMPORTING:
        added = job.applied.get("created", 0)
        consequences.append(
            f"The {added:,} new subscribers added so far stay on the list; the rest of the "
            "file is not imported."
        )
    else:
        consequences.append("To import it later, you upload and check the file again.")
    return render_template(
        "admin/confirm_action.html",
        title=f"Cancel the import of {job.filename}?",
        consequences=consequences,
        action=url_for("admin.import_cancel", import_id=import_id),
        button="Cancel this import",
        back=url_for("admin.import_page", import_id=import_id),
        back_label="No, back to the import",
    )


@bp.post("/imports/<int:import_id>/cancel")
def import_cancel(import_id: int):
    """Stop an import: nothing more of it is checked or imported, and its file is deleted."""
    with services().database.begin() as db:
        cancelled = imports.cancel(db, import_id, now=now())
    flash("Import cancelled; its file is deleted." if cancelled else "That import has ended.")
    return redirect(url_for("admin.import_page", import_id=import_id), 303)
