//! densenetc runtime (artefact loader and executors); see issue 4.
