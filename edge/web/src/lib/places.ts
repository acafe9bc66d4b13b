// Places the pages start from.

/** Helsinki's centre (the Railway Square), inside the mesh's road network. */
export const HELSINKI: [number, number] = [60.1699, 24.9384];
