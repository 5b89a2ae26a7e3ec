"""ltp-assignments: release the course's assignments and grade a folder of submissions with nbgrader.

    ltp-assignments release [--course DIR] [ASSIGNMENT ...]
    ltp-assignments grade SUBMISSIONS_DIR --csv grades.csv [--course DIR] [--feedback DIR]

The course is an nbgrader course directory (default notebooks/assignments): `source/<assignment>/`
holds the instructor's notebooks, nbgrader_config.py its settings. `release` is nbgrader's
generate_assignment for each assignment (it adds the assignment to the gradebook). `grade` does
what takes several nbgrader commands and some care by hand:

1. collects `SUBMISSIONS_DIR/<student>/<assignment>/*.ipynb` into the course's `submitted/`
   (a notebook under another name is taken when it is the only one; an unchanged submission is
   left alone, so a rerun grades only what is new or was not finished);
2. autogrades each assignment (`nbgrader autograde`), every kernel through
   `ltp_core.teaching.sandbox` (this Python, its own empty folder, limits; see docs/assignments.md);
3. gives every student and assignment a score and a one-line account of what happened: a missing
   notebook, restored graded cells, failed tests with their errors, a cell stopped by the time
   limit, a kernel that died, answers awaiting grading by hand;
4. writes the CSV (one row per student and assignment, per-task scores) and nbgrader's feedback
   HTML (`feedback/` in the course, copied to --feedback when given).

Grades live in the course's gradebook (SQLite), which nbgrader writes after each submission: an
interrupted run loses none of them, and running `grade` again finishes the rest and writes the
same CSV. Tasks are read from the test cells' ids: `t<k>_...` counts towards task k.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import logging
import os
import re
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..io import atomic_write_bytes

__all__ = ["main", "release", "grade", "Course", "Row", "CSV_FIELDS", "task_of", "executed"]

DEFAULT_COURSE = "notebooks/assignments"
TASK_ID = re.compile(r"^t(\d+)_")
STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")
CSV_FIELDS = ["student", "assignment", "status", "score", "max_score", "autograded_score", "autograded_max",
              "awaiting_manual"]
_SANDBOX = "ltp_core.teaching.sandbox.SandboxKernelManager"


def task_of(grade_id: str) -> int | None:
    """The task number of a graded cell, from its id `t<k>_...` (None for another id)."""
    m = TASK_ID.match(grade_id)
    return int(m.group(1)) if m else None


def _environment_on_path() -> None:
    # nbgrader's gradebook migrations run `alembic`, found on PATH: put this Python's bin/ first.
    bin_dir = os.path.dirname(sys.executable)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


class Course:
    """An nbgrader course directory and its configuration (nbgrader_config.py in it)."""

    def __init__(self, root: str | os.PathLike = DEFAULT_COURSE, cell_timeout: int | None = None) -> None:
        from traitlets.config.loader import PyFileConfigLoader

        self.root = Path(root).resolve()
        if not (self.root / "nbgrader_config.py").is_file():
            raise FileNotFoundError(f"{self.root} has no nbgrader_config.py: give --course the course folder "
                                    f"(the one holding source/ and nbgrader_config.py; default {DEFAULT_COURSE})")
        if cell_timeout is not None and cell_timeout < 1:
            raise ValueError(f"cell timeout must be >= 1 second, got {cell_timeout}")
        _environment_on_path()
        self.config = PyFileConfigLoader("nbgrader_config.py", path=str(self.root)).load_config()
        self.config.CourseDirectory.root = str(self.root)
        if "kernel_manager_class" not in self.config.get("Execute", {}):
            self.config.Execute.kernel_manager_class = _SANDBOX
        if cell_timeout is not None:
            self.config.Execute.timeout = cell_timeout
        self.log_file = self.root / ".nbgrader.log"

    @property
    def db_url(self) -> str:
        return self.coursedir().db_url

    @property
    def course_id(self) -> str:
        return self.coursedir().course_id

    def coursedir(self, **attrs):
        from nbgrader.coursedir import CourseDirectory

        coursedir = CourseDirectory(config=self.config)
        for name, value in attrs.items():
            setattr(coursedir, name, value)
        return coursedir

    def assignments(self) -> list[str]:
        """The assignments: the folders under source/."""
        source = self.root / "source"
        return sorted(p.name for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if source.is_dir() else []

    def gradebook(self):
        from nbgrader.api import Gradebook

        return Gradebook(self.db_url, self.course_id)

    def run(self, converter, assignment: str, student: str = "*", force: bool = False, config=None) -> dict:
        """One nbgrader converter (GenerateAssignment, Autograde, GenerateFeedback) over `assignment`;
        nbgrader's log is appended to the course's .nbgrader.log. Returns capture_log's dict."""
        from nbgrader.utils import capture_log

        config = config or self.config
        app = converter(coursedir=self.coursedir(assignment_id=assignment, student_id=student), config=config)
        app.force = force
        result = capture_log(app)
        with open(self.log_file, "a", encoding="utf-8") as f:
            f.write(f"--- {converter.__name__} {assignment} {student}\n")
            f.write(f"{result.get('log', '')}{result.get('error', '')}\n")
        return result

    def release_notebooks(self, assignment: str) -> dict[str, Path]:
        """{notebook name without .ipynb: its released file}."""
        folder = self.root / "release" / assignment
        return {p.stem: p for p in sorted(folder.glob("*.ipynb"))}

    def known(self, assignment: str) -> bool:
        """Whether the gradebook holds the assignment and its release exists."""
        from nbgrader.api import MissingEntry

        if not self.release_notebooks(assignment):
            return False
        with self.gradebook() as gb:
            try:
                return bool(gb.find_assignment(assignment).notebooks)
            except MissingEntry:
                return False


# -- release ------------------------------------------------------------------------------

def release(course: Course, assignments: list[str] | None = None, out=sys.stdout) -> list[Path]:
    """nbgrader generate_assignment for each assignment (all under source/ by default); returns
    the release folders. An unknown assignment is a ValueError naming the known ones."""
    from nbgrader.converters import GenerateAssignment

    known = course.assignments()
    names = assignments or known
    unknown = [a for a in names if a not in known]
    if unknown:
        raise ValueError(f"unknown assignment(s) {unknown}; the course's assignments (source/): {known}")
    folders = []
    for name in names:
        result = course.run(GenerateAssignment, name, force=True)
        if not result["success"]:
            raise RuntimeError(f"nbgrader generate_assignment {name} failed:\n{result.get('error', '')}"
                               f"\n(log: {course.log_file})")
        folders.append(course.root / "release" / name)
        print(f"released {name} -> {folders[-1]}", file=out)
    return folders


# -- grade --------------------------------------------------------------------------------

@dataclass
class Row:
    """One student's grade for one assignment, as the CSV has it."""
    student: str
    assignment: str
    status: str = "graded"                       # graded | missing | failed | unknown
    tasks: dict[int, list[float]] = field(default_factory=dict)   # task -> [score, max]
    score: float = 0.0
    max_score: float = 0.0
    auto_score: float = 0.0
    auto_max: float = 0.0
    awaiting_manual: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_dict(self, num_tasks: int) -> dict[str, object]:
        row = {"student": self.student, "assignment": self.assignment, "status": self.status,
               "score": _num(self.score), "max_score": _num(self.max_score), "autograded_score": _num(self.auto_score),
               "autograded_max": _num(self.auto_max), "awaiting_manual": _num(self.awaiting_manual)}
        for k in range(1, num_tasks + 1):
            got = self.tasks.get(k)
            row[f"task{k}"] = "" if got is None else _num(got[0])
            row[f"task{k}_max"] = "" if got is None else _num(got[1])
        row["feedback"] = "; ".join(self.notes)
        return row


def _num(x: float) -> str:
    return f"{x:g}"


@dataclass
class _Submission:
    student: str
    assignment: str
    notes: list[str] = field(default_factory=list)
    present: bool = False     # some notebook of the assignment was submitted
    unknown: bool = False


def _read_bytes(path: Path) -> bytes:
    return path.read_bytes()


def _collect(course: Course, submissions: Path, wanted: list[str]) -> list[_Submission]:
    """Copy SUBMISSIONS/<student>/<assignment>/*.ipynb into the course's submitted/ folder."""
    students = sorted(p.name for p in submissions.iterdir() if p.is_dir() and not p.name.startswith("."))
    bad = [s for s in students if not STUDENT_ID.match(s)]
    if bad:
        raise ValueError(f"student folder names {bad} are not valid ids: use letters, digits and . _ @ - "
                         "(starting with a letter or digit)")
    known = course.assignments()
    out = []
    for student in students:
        for extra in sorted(set(p.name for p in (submissions / student).iterdir() if p.is_dir()) - set(known)):
            out.append(_Submission(student, extra, [f"'{extra}' is not an assignment of this course (known: "
                                                    f"{', '.join(known)})"], unknown=True))
        for assignment in wanted:
            out.append(_copy_one(course, submissions / student / assignment, student, assignment))
    return out


def _copy_one(course: Course, folder: Path, student: str, assignment: str) -> _Submission:
    sub = _Submission(student, assignment)
    expected = course.release_notebooks(assignment)
    given = {p.name: p for p in sorted(folder.glob("*.ipynb"))} if folder.is_dir() else {}
    chosen: dict[str, Path] = {}
    for name in expected:
        if f"{name}.ipynb" in given:
            chosen[name] = given.pop(f"{name}.ipynb")
    missing = [n for n in expected if n not in chosen]
    if len(missing) == 1 and len(given) == 1:      # one notebook under another name: take it
        (other, path), = given.items()
        chosen[missing[0]] = path
        sub.notes.append(f"graded {other} as {missing[0]}.ipynb")
        missing = []
    for name in missing:
        sub.notes.append(f"no notebook {name}.ipynb submitted: 0 points for it")
    target = course.root / "submitted" / student / assignment
    graded = course.root / "autograded" / student / assignment
    old = {p.stem for p in target.glob("*.ipynb")} if target.is_dir() else set()
    changed = old != set(chosen)
    for name, path in chosen.items():
        dest = target / f"{name}.ipynb"
        data = _read_bytes(path)
        if not dest.exists() or dest.read_bytes() != data:
            dest.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(dest, data)
            changed = True
    for name in old - set(chosen):
        (target / f"{name}.ipynb").unlink()
    if changed and graded.exists():  # a new or changed submission is graded afresh
        shutil.rmtree(graded)
    sub.present = bool(chosen)
    return sub


def _complete(course: Course, student: str, assignment: str) -> bool:
    """Whether a run finished autograding this submission: every notebook written back executed.
    (nbgrader writes each notebook twice: cleaned before it runs, executed after the gradebook
    has its grades; a run stopped in between leaves the cleaned one.)"""
    submitted = {p.name for p in (course.root / "submitted" / student / assignment).glob("*.ipynb")}
    graded = course.root / "autograded" / student / assignment
    return bool(submitted) and all(executed(graded / name) for name in submitted)


def executed(path: Path) -> bool:
    """Whether the notebook at `path` exists, reads, and has a code cell with an execution count."""
    import nbformat

    try:
        nb = nbformat.read(path, as_version=4)
    except Exception:  # noqa: BLE001 (missing, half-written: not finished)
        return False
    return any(c.cell_type == "code" and c.get("execution_count") is not None for c in nb.cells)


def _zero_ungraded(course: Course, student: str, assignment: str) -> None:
    """Give a submission nbgrader could not grade (nothing submitted, a dead kernel) zero points in
    the gradebook for every cell without a score, as nbgrader does for a missing notebook."""
    with course.gradebook() as gb:
        gb.update_or_create_student(student)
        submission = gb.update_or_create_submission(assignment, student)
        for notebook in submission.notebooks:
            for grade in notebook.grades:
                if grade.auto_score is None and grade.manual_score is None:
                    grade.auto_score = 0
                    grade.needs_manual_grade = False
        gb.db.commit()


def _cell_changes(course: Course, student: str, assignment: str) -> list[str]:
    """What the student did to graded or read-only cells (nbgrader restores them from its copy)."""
    import nbformat
    from nbgrader.utils import compute_checksum, is_grade, is_locked, is_solution

    notes = []
    for name, released in course.release_notebooks(assignment).items():
        path = course.root / "submitted" / student / assignment / f"{name}.ipynb"
        if not path.is_file():
            continue
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as e:  # noqa: BLE001 (anything unreadable is reported, not raised)
            notes.append(f"{name}.ipynb is not a readable notebook ({type(e).__name__})")
            continue
        ref = nbformat.read(released, as_version=4)
        cells = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in nb.cells}
        deleted, changed, unanswered = [], [], 0
        for cell in ref.cells:
            meta = cell.metadata.get("nbgrader", {})
            mine = cells.get(meta.get("grade_id"))
            if is_solution(cell) and cell.cell_type == "code" and mine is not None:
                unanswered += mine.source.strip() == cell.source.strip()
            if not meta.get("grade_id") or not (is_locked(cell) or (is_grade(cell) and not is_solution(cell))):
                continue
            mine = cells.get(meta["grade_id"])
            if mine is None:
                deleted.append(meta["grade_id"])
            elif "nbgrader" not in mine.metadata or compute_checksum(mine) != meta.get("checksum"):
                changed.append(meta["grade_id"])
        graded = [g for g in deleted if _is_graded(ref, g)]
        if graded:
            notes.append(f"deleted graded cell(s) {', '.join(graded)}: restored from the gradebook and run")
        if changed:
            notes.append(f"changed read-only cell(s) {', '.join(changed)}: restored from the release")
        if unanswered:
            notes.append(f"{unanswered} solution cell(s) left as released")
    return notes


def _is_graded(nb, grade_id: str) -> bool:
    return any(c.metadata.get("nbgrader", {}).get("grade_id") == grade_id and c.metadata["nbgrader"].get("grade")
               for c in nb.cells)


def _errors(course: Course, student: str, assignment: str) -> tuple[dict[str, str], list[str]]:
    """From the autograded notebooks: {test cell id: the error it raised}, and the cells stopped
    by the per-cell time limit."""
    import nbformat

    errors, stopped = {}, []
    for path in sorted((course.root / "autograded" / student / assignment).glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for i, cell in enumerate(nb.cells):
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id", f"cell {i + 1}")
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    if out.get("ename") == "CellTimeoutError":
                        stopped.append(grade_id)
                    errors.setdefault(grade_id, out.get("ename", "error"))
                elif out.get("output_type") == "stream" and out.get("name") == "stderr":
                    errors.setdefault(grade_id, "output on stderr")
    return errors, stopped


def _row(course: Course, sub: _Submission, graded_ok: bool, failure: str | None) -> Row:
    from nbgrader.api import MissingEntry

    row = Row(sub.student, sub.assignment, notes=list(sub.notes))
    if sub.unknown:
        row.status = "unknown"
        return row
    if not sub.present:
        row.status = "missing"
    elif not graded_ok:
        row.status = "failed"
        row.notes.append(f"grading failed ({failure}): 0 points")
    with course.gradebook() as gb:
        try:
            grades = [g.to_dict() for nb in gb.find_submission(sub.assignment, sub.student).notebooks
                      for g in nb.grades]
        except MissingEntry:
            grades = []
    errors, stopped = _errors(course, sub.student, sub.assignment) if graded_ok else ({}, [])
    failed = []
    for g in sorted(grades, key=lambda g: (g["notebook"], g["name"])):
        manual = g["cell_type"] == "markdown"
        score = g["manual_score"] if g["manual_score"] is not None else (g["auto_score"] or 0.0)
        task = task_of(g["name"])
        if task is not None:
            row.tasks.setdefault(task, [0.0, 0.0])
            row.tasks[task][0] += score
            row.tasks[task][1] += g["max_score"]
        row.score += score
        row.max_score += g["max_score"]
        if manual:
            if g["needs_manual_grade"] and g["manual_score"] is None and sub.present and graded_ok:
                row.awaiting_manual += g["max_score"]
        else:
            row.auto_score += score
            row.auto_max += g["max_score"]
            if score < g["max_score"] and sub.present and graded_ok:
                failed.append(f"{g['name']} ({errors.get(g['name'], 'failed')})")
    if stopped:
        row.notes.append(f"stopped by the per-cell time limit: {', '.join(stopped)}")
    tests = {g["name"] for g in grades}
    raised = [f"{c} ({e})" for c, e in errors.items() if c not in tests and c not in stopped]
    if raised:
        row.notes.append(f"errors in: {', '.join(raised)}")
    if failed:
        row.notes.append(f"failed: {', '.join(failed)}")
    elif sub.present and graded_ok:
        row.notes.append("all autograded tests passed")
    if row.awaiting_manual:
        row.notes.append(f"{row.awaiting_manual:g} point(s) of written answers await grading by hand")
    row.notes.append(f"{row.auto_score:g}/{row.auto_max:g} autograded points")
    return row


def grade(course: Course, submissions: str | os.PathLike, csv_path: str | os.PathLike,
          feedback_dir: str | os.PathLike | None = None, assignments: list[str] | None = None,
          out=sys.stdout) -> list[Row]:
    """Collect, autograde, score, write the CSV and the feedback HTML (see the module docstring)."""
    from nbgrader.converters import Autograde, GenerateFeedback

    submissions = Path(submissions)
    if not submissions.is_dir():
        raise FileNotFoundError(f"submissions folder {submissions} does not exist; expected "
                                "<student>/<assignment>/<notebook>.ipynb inside it")
    known = course.assignments()
    unknown = [a for a in assignments or [] if a not in known]
    if unknown:
        raise ValueError(f"unknown assignment(s) {unknown}; the course's assignments (source/): {known}")
    submitted = {p.name for s in submissions.iterdir() if s.is_dir() for p in s.iterdir() if p.is_dir()}
    wanted = assignments or sorted(submitted & set(known))
    to_release = [a for a in wanted if not course.known(a)]
    if to_release:
        release(course, to_release, out=out)
    subs = _collect(course, submissions, wanted)
    outcome: dict[tuple[str, str], tuple[bool, str | None]] = {}
    for assignment in sorted({s.assignment for s in subs if s.present}):
        todo = [s for s in subs if s.assignment == assignment and s.present]
        for s in todo:   # a run stopped half-way leaves a partial folder: grade that submission again
            partial = course.root / "autograded" / s.student / assignment
            if partial.exists() and not _complete(course, s.student, assignment):
                shutil.rmtree(partial)
        fresh = [s.student for s in todo if not _complete(course, s.student, assignment)]
        print(f"grading {assignment}: {len(todo)} submission(s), {len(fresh)} to autograde", file=out, flush=True)
        for student in fresh:  # one at a time: the gradebook has every finished one, whatever happens next
            stale = course.root / "feedback" / student / assignment
            if stale.exists():  # nbgrader would keep feedback older than the grades
                shutil.rmtree(stale)
            result = course.run(Autograde, assignment, student)
            if not _complete(course, student, assignment):
                outcome[student, assignment] = (False, _failure_reason(result))
                _zero_ungraded(course, student, assignment)
        feedback = course.config.copy()
        feedback.HTMLExporter.template_name = "feedback"
        course.run(GenerateFeedback, assignment, config=feedback)
    for s in subs:
        if not s.present and not s.unknown:
            _zero_ungraded(course, s.student, s.assignment)
    rows = []
    for s in subs:
        ok, failure = outcome.get((s.student, s.assignment), (True, None))
        if s.present and ok:
            s.notes.extend(_cell_changes(course, s.student, s.assignment))
        rows.append(_row(course, s, ok, failure))
    write_csv(rows, csv_path)
    print(f"wrote {csv_path}: {len(rows)} row(s)", file=out)
    _copy_feedback(course, rows, feedback_dir, out)
    return rows


def _failure_reason(result: dict) -> str:
    text = (result.get("log", "") + result.get("error", "")).lower()
    if "dead" in text or "died" in text:
        return "the kernel died: the CPU-time or memory limit, or a crash"
    if "unresponsive" in text:
        return "the kernel stopped responding"
    if "notjson" in text or "not valid json" in text or "unreadable" in text or "jsondecodeerror" in text:
        return "the notebook could not be read"
    last = [line for line in (result.get("error") or result.get("log", "")).strip().splitlines() if line.strip()]
    return last[-1].strip()[:200] if last else "nbgrader reported an error"


def write_csv(rows: list[Row], path: str | os.PathLike) -> None:
    """The grades as CSV, atomically: CSV_FIELDS, task<k> and task<k>_max, feedback."""
    num_tasks = max((max(r.tasks) for r in rows if r.tasks), default=0)
    fields = CSV_FIELDS + [f for k in range(1, num_tasks + 1) for f in (f"task{k}", f"task{k}_max")] + ["feedback"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in sorted(rows, key=lambda r: (r.student, r.assignment)):
        writer.writerow(r.as_dict(num_tasks))
    atomic_write_bytes(path, buf.getvalue().encode())


def _copy_feedback(course: Course, rows: list[Row], feedback_dir, out) -> None:
    source = course.root / "feedback"
    if feedback_dir is None:
        if source.is_dir():
            print(f"feedback HTML in {source}/<student>/<assignment>/", file=out)
        return
    for r in rows:
        folder = source / r.student / r.assignment
        for page in sorted(folder.glob("*.html")) if folder.is_dir() else []:
            atomic_write_bytes(Path(feedback_dir) / r.student / r.assignment / page.name, page.read_bytes())
    print(f"feedback HTML copied to {feedback_dir}/<student>/<assignment>/", file=out)


# -- command line -------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ltp-assignments", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("release", help="generate the student versions (nbgrader generate_assignment)")
    r.add_argument("assignments", nargs="*", metavar="ASSIGNMENT", help="default: every folder under source/")
    r.add_argument("--course", default=DEFAULT_COURSE, help=f"the course folder (default {DEFAULT_COURSE})")
    g = sub.add_parser("grade", help="collect, autograde, write the CSV and the feedback HTML")
    g.add_argument("submissions", metavar="SUBMISSIONS_DIR", help="<student>/<assignment>/<notebook>.ipynb inside")
    g.add_argument("--csv", required=True, help="the grades CSV to write")
    g.add_argument("--course", default=DEFAULT_COURSE, help=f"the course folder (default {DEFAULT_COURSE})")
    g.add_argument("--feedback", help="also copy the feedback HTML here, as <student>/<assignment>/<notebook>.html")
    g.add_argument("--assignment", action="append", dest="assignments", metavar="ASSIGNMENT",
                   help="grade only this assignment (repeatable; default: every one submitted)")
    g.add_argument("--cell-timeout", type=int, help="seconds per cell (default: the course's Execute.timeout)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.getLogger("traitlets").setLevel(logging.ERROR)   # nbgrader's log goes to the course's .nbgrader.log
    with contextlib.suppress(ImportError):  # nbgrader's own session handling warns; nothing to act on
        from sqlalchemy.exc import SAWarning

        warnings.simplefilter("ignore", SAWarning)
    try:
        course = Course(args.course, getattr(args, "cell_timeout", None))
        if args.command == "release":
            release(course, args.assignments)
        else:
            grade(course, args.submissions, args.csv, args.feedback, args.assignments)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"ltp-assignments: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
